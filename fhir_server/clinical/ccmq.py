"""The two constitution questionnaires as data: items, which type each item scores, reverse items.

Why the tables live here (and not only in the CodeSystems of ``terminology/``): scoring must
not depend on what happens to be stored in the database; a CodeSystem edited by a user must
not silently change a patient's constitution. The CodeSystems ``tcm-ccmq-2009-item`` and
``tcm-ccmq-2025-item`` carry the same codes for display and search; a test compares the two
when both are present.

Source: research ``tcm_standards.md`` §1.3 (ZYYXH/T157-2009, 60-item form) and §1.4
(GB/T 46939-2025 short form, [V] in two open-source implementations, official Annex A not seen).
Codes are numbered in the research's table order, type by type (平和, 气虚, 阳虚, 阴虚, 痰湿, 湿热,
血瘀, 气郁, 特禀); a question shared by two types is numbered once, at its first occurrence.

Two wordings per item: ``label``, the research's short wording (used in error messages), and
``question``, the full question as asked ("您…吗？"), transcribed like the CodeSystems' displays
from published copies of the questionnaire, not from the standards' PDFs [U]. The 2025 wording
differs from 2009 in two characters (晦暗/偏暗 for 晦黯/偏黯) and in not repeating 限女性/男性回答.

The 2009 form lists 61 distinct questions: 67 type-item slots − 6 shared questions. Everyone
answers 60 of them, because q41 (带下色黄) is for women only and q42 (阴囊潮湿) for men only.

======  ======================================================  =========================
linkId  question (ZYYXH/T157-2009)                              scored in (* = reversed)
======  ======================================================  =========================
q01     精力充沛                                                A
q02     容易疲乏                                                A*, B
q03     说话声音低弱无力                                        A*, B
q04     闷闷不乐、情绪低沉                                      A*, H
q05     比一般人耐受不了寒冷(冬天的寒冷,夏天的冷空调、电扇等)   A*, C
q06     能适应外界自然和社会环境的变化                          A
q07     容易失眠                                                A*
q08     容易忘事(健忘)                                          A*, G
q09     容易气短(呼吸短促,接不上气)                             B
q10     容易心慌                                                B
q11     容易头晕或站起时晕眩                                    B
q12     比别人容易患感冒                                        B, C
q13     喜欢安静、懒得说话                                      B
q14     活动量稍大就容易出虚汗                                  B
q15     手脚发凉                                                C
q16     胃脘部、背部或腰膝部怕冷                                C
q17     感到怕冷、衣服比别人穿得多                              C
q18     吃(喝)凉的东西会感到不舒服或者怕吃(喝)凉的东西          C
q19     受凉或吃(喝)凉的东西后,容易腹泻(拉肚子)                 C
q20     手脚心发热                                              D
q21     身体、脸上发热                                          D
q22     皮肤或口唇干                                            D
q23     口唇的颜色比一般人红                                    D
q24     容易便秘或大便干燥                                      D
q25     面部两颧潮红或偏红                                      D
q26     眼睛干涩                                                D
q27     口干咽燥、总想喝水                                      D
q28     胸闷或腹部胀满                                          E
q29     身体沉重不轻松或不爽快                                  E
q30     腹部肥满松软                                            E
q31     额部油脂分泌多                                          E
q32     上眼睑比别人肿(轻微隆起)                                E
q33     嘴里有黏黏的感觉                                        E
q34     平时痰多,特别是咽喉部总感到有痰堵着                     E
q35     舌苔厚腻或有舌苔厚厚的感觉                              E
q36     面部或鼻部有油腻感或者油亮发光                          F
q37     易生痤疮或疮疖                                          F
q38     口苦或嘴里有异味                                        F
q39     大便黏滞不爽、有解不尽的感觉                            F
q40     小便时尿道有发热感、尿色浓(深)                          F
q41     带下色黄(白带颜色发黄)  — women only                    F
q42     阴囊部位潮湿  — men only                                F
q43     皮肤在不知不觉中会出现青紫瘀斑(皮下出血)                G
q44     两颧部有细微红丝                                        G
q45     身体上有哪里疼痛                                        G
q46     面色晦黯或容易出现褐斑                                  G
q47     容易有黑眼圈                                            G
q48     口唇颜色偏黯                                            G
q49     容易精神紧张、焦虑不安                                  H
q50     多愁善感、感情脆弱                                      H
q51     容易感到害怕或受到惊吓                                  H
q52     胁肋部或乳房胀痛                                        H
q53     无缘无故叹气                                            H
q54     咽喉部有异物感,且吐之不出、咽之不下                     H
q55     没有感冒时也会打喷嚏                                    I
q56     没有感冒时也会鼻塞、流鼻涕                              I
q57     因季节变化、温度变化或异味等原因而咳喘                  I
q58     容易过敏(药物、食物、气味、花粉或季节交替、气候变化时)  I
q59     皮肤容易起荨麻疹(风团、风疹块、风疙瘩)                  I
q60     皮肤因过敏出现过紫癜(紫红色瘀点、瘀斑)                  I
q61     皮肤一抓就红,并出现抓痕                                 I
======  ======================================================  =========================

The GB/T 46939-2025 short form: 27 distinct questions (30 slots − 3 shared), 26 answered per
person. Its items reuse the 2009 questions; the 2009 code of each is given for comparison.

======  ===========  ==============================================  =================
linkId  2009 code    question                                        scored in
======  ===========  ==============================================  =================
s01     q01          精力充沛                                        A
s02     q02          容易疲乏                                        A*, B
s03     q04          闷闷不乐、情绪低沉                              A*, H
s04     q05          比一般人耐受不了寒冷(…)                         A*, C
s05     q09          容易气短(呼吸短促,接不上气)                     B
s06     q10          容易心慌                                        B
s07     q16          胃脘部、背部或腰膝部怕冷                        C
s08     q17          感到怕冷、衣服比别人穿得多                      C
s09     q21          身体、脸上发热                                  D
s10     q22          皮肤或口唇干                                    D
s11     q25          面部两颧潮红或偏红                              D
s12     q29          身体沉重不轻松或不爽快                          E
s13     q30          腹部肥满松软                                    E
s14     q33          嘴里有黏黏的感觉                                E
s15     q36          面部或鼻部有油腻感或者油亮发光                  F
s16     q40          小便时尿道有发热感、尿色浓(深)                  F
s17     q41          带下色黄(白带颜色发黄)  — women only            F
s18     q42          阴囊部位潮湿  — men only                        F
s19     q45          身体上有哪里疼痛                                G
s20     q46          面色晦黯或容易出现褐斑                          G
s21     q48          口唇颜色偏黯                                    G
s22     q49          容易精神紧张、焦虑不安                          H
s23     q50          多愁善感、感情脆弱                              H
s24     q55          没有感冒时也会打喷嚏                            I
s25     q58          容易过敏(…)                                     I
s26     q59          皮肤容易起荨麻疹(…)                             I
s27     q61          皮肤一抓就红,并出现抓痕                         I
======  ===========  ==============================================  =================
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

Sex = Literal["female", "male"]

BASE = "http://fhir.telefhir.cn"
FORM_SYSTEM = f"{BASE}/CodeSystem/tcm-constitution-form"

#: the nine types, A first (平和 is the balanced type, B–I are the biased ones)
TYPES: MappingProxyType[str, str] = MappingProxyType(
    {
        "A": "平和质",
        "B": "气虚质",
        "C": "阳虚质",
        "D": "阴虚质",
        "E": "痰湿质",
        "F": "湿热质",
        "G": "血瘀质",
        "H": "气郁质",
        "I": "特禀质",
    }
)
BALANCED = "A"
BIASED = tuple(t for t in TYPES if t != BALANCED)

#: the five-point answer scale (§1.2), value -> label; codes "1"–"5" of :data:`ANSWER_SYSTEM`
SCALE: MappingProxyType[int, str] = MappingProxyType(
    {1: "没有（根本不）", 2: "很少（有一点）", 3: "有时（有些）", 4: "经常（相当）", 5: "总是（非常）"}
)
ANSWER_SYSTEM = f"{BASE}/CodeSystem/tcm-ccmq-answer"


@dataclass(frozen=True)
class Item:
    code: str
    label: str
    #: the question as asked (Questionnaire.item.text, the item CodeSystem's display)
    question: str
    #: only this sex answers the item (None: everyone)
    sex: Sex | None = None


@dataclass(frozen=True)
class Slot:
    """An item as it counts in one type: reverse-scored items count 6 − answer."""

    code: str
    reverse: bool


@dataclass(frozen=True)
class Form:
    #: code in tcm-constitution-form
    key: str
    title: str
    #: display of :attr:`key` in tcm-constitution-form
    display: str
    questionnaire_id: str
    #: id of the CodeSystem of the form's item codes (``Questionnaire.item.code``)
    item_system_id: str
    items: tuple[Item, ...]
    #: type code -> the slots scored in it, in the standard's order
    types: MappingProxyType[str, tuple[Slot, ...]]

    @property
    def questionnaire_url(self) -> str:
        return f"{BASE}/Questionnaire/{self.questionnaire_id}"

    @property
    def item_system(self) -> str:
        return f"{BASE}/CodeSystem/{self.item_system_id}"

    def item(self, code: str) -> Item | None:
        return _ITEM_INDEX[self.key].get(code)

    def applies(self, item: Item, sex: Sex) -> bool:
        return item.sex is None or item.sex == sex


def _slots(spec: str) -> tuple[Slot, ...]:
    """``"q01 q02* …"`` -> slots; ``*`` marks a reverse-scored item (§1.2)."""
    return tuple(Slot(s.rstrip("*"), s.endswith("*")) for s in spec.split())


# ZYYXH/T157-2009 wording [U]
_QUESTIONS_2009: dict[str, str] = {
    "q01": "您精力充沛吗？",
    "q02": "您容易疲乏吗？",
    "q03": "您说话声音低弱无力吗？",
    "q04": "您感到闷闷不乐、情绪低沉吗？",
    "q05": "您比一般人耐受不了寒冷（冬天的寒冷，夏天的冷空调、电扇等）吗？",
    "q06": "您能适应外界自然和社会环境的变化吗？",
    "q07": "您容易失眠吗？",
    "q08": "您容易忘事（健忘）吗？",
    "q09": "您容易气短（呼吸短促，接不上气）吗？",
    "q10": "您容易心慌吗？",
    "q11": "您容易头晕或站起时晕眩吗？",
    "q12": "您比别人容易患感冒吗？",
    "q13": "您喜欢安静、懒得说话吗？",
    "q14": "您活动量稍大就容易出虚汗吗？",
    "q15": "您手脚发凉吗？",
    "q16": "您胃脘部、背部或腰膝部怕冷吗？",
    "q17": "您感到怕冷、衣服比别人穿得多吗？",
    "q18": "您吃（喝）凉的东西会感到不舒服或者怕吃（喝）凉的东西吗？",
    "q19": "您受凉或吃（喝）凉的东西后，容易腹泻（拉肚子）吗？",
    "q20": "您感到手脚心发热吗？",
    "q21": "您感觉身体、脸上发热吗？",
    "q22": "您皮肤或口唇干吗？",
    "q23": "您口唇的颜色比一般人红吗？",
    "q24": "您容易便秘或大便干燥吗？",
    "q25": "您面部两颧潮红或偏红吗？",
    "q26": "您感到眼睛干涩吗？",
    "q27": "您感到口干咽燥、总想喝水吗？",
    "q28": "您感到胸闷或腹部胀满吗？",
    "q29": "您感到身体沉重不轻松或不爽快吗？",
    "q30": "您腹部肥满松软吗？",
    "q31": "您有额部油脂分泌多的现象吗？",
    "q32": "您上眼睑比别人肿（上眼睑有轻微隆起现象）吗？",
    "q33": "您嘴里有黏黏的感觉吗？",
    "q34": "您平时痰多，特别是咽喉部总感到有痰堵着吗？",
    "q35": "您舌苔厚腻或有舌苔厚厚的感觉吗？",
    "q36": "您面部或鼻部有油腻感或者油亮发光吗？",
    "q37": "您容易生痤疮或疮疖吗？",
    "q38": "您感到口苦或嘴里有异味吗？",
    "q39": "您大便黏滞不爽、有解不尽的感觉吗？",
    "q40": "您小便时尿道有发热感、尿色浓（深）吗？",
    "q41": "您带下色黄（白带颜色发黄）吗？（限女性回答）",
    "q42": "您的阴囊部位潮湿吗？（限男性回答）",
    "q43": "您的皮肤在不知不觉中会出现青紫瘀斑（皮下出血）吗？",
    "q44": "您两颧部有细微红丝吗？",
    "q45": "您身体上有哪里疼痛吗？",
    "q46": "您面色晦黯或容易出现褐斑吗？",
    "q47": "您容易有黑眼圈吗？",
    "q48": "您口唇颜色偏黯吗？",
    "q49": "您容易精神紧张、焦虑不安吗？",
    "q50": "您多愁善感、感情脆弱吗？",
    "q51": "您容易感到害怕或受到惊吓吗？",
    "q52": "您胁肋部或乳房胀痛吗？",
    "q53": "您无缘无故叹气吗？",
    "q54": "您咽喉部有异物感，且吐之不出、咽之不下吗？",
    "q55": "您没有感冒时也会打喷嚏吗？",
    "q56": "您没有感冒时也会鼻塞、流鼻涕吗？",
    "q57": "您有因季节变化、温度变化或异味等原因而咳喘的现象吗？",
    "q58": "您容易过敏（对药物、食物、气味、花粉或在季节交替、气候变化时）吗？",
    "q59": "您的皮肤容易起荨麻疹（风团、风疹块、风疙瘩）吗？",
    "q60": "您的皮肤因过敏出现过紫癜（紫红色瘀点、瘀斑）吗？",
    "q61": "您的皮肤一抓就红，并出现抓痕吗？",
}

# GB/T 46939-2025 wording [U]
_QUESTIONS_2025: dict[str, str] = {
    "s01": "您精力充沛吗？",
    "s02": "您容易疲乏吗？",
    "s03": "您感到闷闷不乐、情绪低沉吗？",
    "s04": "您比一般人耐受不了寒冷（冬天的寒冷，夏天的冷空调、电扇等）吗？",
    "s05": "您容易气短（呼吸短促，接不上气）吗？",
    "s06": "您容易心慌吗？",
    "s07": "您胃脘部、背部或腰膝部怕冷吗？",
    "s08": "您感到怕冷、衣服比别人穿得多吗？",
    "s09": "您感觉身体、脸上发热吗？",
    "s10": "您皮肤或口唇干吗？",
    "s11": "您面部两颧潮红或偏红吗？",
    "s12": "您感到身体沉重不轻松或不爽快吗？",
    "s13": "您腹部肥满松软吗？",
    "s14": "您嘴里有黏黏的感觉吗？",
    "s15": "您面部或鼻部有油腻感或者油亮发光吗？",
    "s16": "您小便时尿道有发热感、尿色浓（深）吗？",
    "s17": "您带下色黄（白带颜色发黄）吗？",
    "s18": "您的阴囊部位潮湿吗？",
    "s19": "您身体上有哪里疼痛吗？",
    "s20": "您面色晦暗或容易出现褐斑吗？",
    "s21": "您口唇颜色偏暗吗？",
    "s22": "您容易精神紧张、焦虑不安吗？",
    "s23": "您多愁善感、感情脆弱吗？",
    "s24": "您没有感冒时也会打喷嚏吗？",
    "s25": "您容易过敏（对药物、食物、气味、花粉或在季节交替、气候变化时）吗？",
    "s26": "您的皮肤容易起荨麻疹（风团、风疹块、风疙瘩）吗？",
    "s27": "您的皮肤一抓就红，并出现抓痕吗？",
}


def _items(*specs: tuple[str, str] | tuple[str, str, Sex], questions: dict[str, str]) -> tuple[Item, ...]:
    return tuple(Item(code, label, questions[code], *rest) for code, label, *rest in specs)


_ITEMS_2009 = _items(
    ("q01", "精力充沛"),
    ("q02", "容易疲乏"),
    ("q03", "说话声音低弱无力"),
    ("q04", "闷闷不乐、情绪低沉"),
    ("q05", "比一般人耐受不了寒冷(冬天的寒冷,夏天的冷空调、电扇等)"),
    ("q06", "能适应外界自然和社会环境的变化"),
    ("q07", "容易失眠"),
    ("q08", "容易忘事(健忘)"),
    ("q09", "容易气短(呼吸短促,接不上气)"),
    ("q10", "容易心慌"),
    ("q11", "容易头晕或站起时晕眩"),
    ("q12", "比别人容易患感冒"),
    ("q13", "喜欢安静、懒得说话"),
    ("q14", "活动量稍大就容易出虚汗"),
    ("q15", "手脚发凉"),
    ("q16", "胃脘部、背部或腰膝部怕冷"),
    ("q17", "感到怕冷、衣服比别人穿得多"),
    ("q18", "吃(喝)凉的东西会感到不舒服或者怕吃(喝)凉的东西"),
    ("q19", "受凉或吃(喝)凉的东西后,容易腹泻(拉肚子)"),
    ("q20", "手脚心发热"),
    ("q21", "身体、脸上发热"),
    ("q22", "皮肤或口唇干"),
    ("q23", "口唇的颜色比一般人红"),
    ("q24", "容易便秘或大便干燥"),
    ("q25", "面部两颧潮红或偏红"),
    ("q26", "眼睛干涩"),
    ("q27", "口干咽燥、总想喝水"),
    ("q28", "胸闷或腹部胀满"),
    ("q29", "身体沉重不轻松或不爽快"),
    ("q30", "腹部肥满松软"),
    ("q31", "额部油脂分泌多"),
    ("q32", "上眼睑比别人肿(轻微隆起)"),
    ("q33", "嘴里有黏黏的感觉"),
    ("q34", "平时痰多,特别是咽喉部总感到有痰堵着"),
    ("q35", "舌苔厚腻或有舌苔厚厚的感觉"),
    ("q36", "面部或鼻部有油腻感或者油亮发光"),
    ("q37", "易生痤疮或疮疖"),
    ("q38", "口苦或嘴里有异味"),
    ("q39", "大便黏滞不爽、有解不尽的感觉"),
    ("q40", "小便时尿道有发热感、尿色浓(深)"),
    ("q41", "带下色黄(白带颜色发黄)", "female"),
    ("q42", "阴囊部位潮湿", "male"),
    ("q43", "皮肤在不知不觉中会出现青紫瘀斑(皮下出血)"),
    ("q44", "两颧部有细微红丝"),
    ("q45", "身体上有哪里疼痛"),
    ("q46", "面色晦黯或容易出现褐斑"),
    ("q47", "容易有黑眼圈"),
    ("q48", "口唇颜色偏黯"),
    ("q49", "容易精神紧张、焦虑不安"),
    ("q50", "多愁善感、感情脆弱"),
    ("q51", "容易感到害怕或受到惊吓"),
    ("q52", "胁肋部或乳房胀痛"),
    ("q53", "无缘无故叹气"),
    ("q54", "咽喉部有异物感,且吐之不出、咽之不下"),
    ("q55", "没有感冒时也会打喷嚏"),
    ("q56", "没有感冒时也会鼻塞、流鼻涕"),
    ("q57", "因季节变化、温度变化或异味等原因而咳喘"),
    ("q58", "容易过敏(药物、食物、气味、花粉或季节交替、气候变化时)"),
    ("q59", "皮肤容易起荨麻疹(风团、风疹块、风疙瘩)"),
    ("q60", "皮肤因过敏出现过紫癜(紫红色瘀点、瘀斑)"),
    ("q61", "皮肤一抓就红,并出现抓痕"),
    questions=_QUESTIONS_2009,
)

# §1.3, each type's items in the standard's order (①②…); shared questions appear in both types.
_TYPES_2009 = {
    "A": _slots("q01 q02* q03* q04* q05* q06 q07* q08*"),
    "B": _slots("q02 q09 q10 q11 q12 q13 q03 q14"),
    "C": _slots("q15 q16 q17 q05 q12 q18 q19"),
    "D": _slots("q20 q21 q22 q23 q24 q25 q26 q27"),
    "E": _slots("q28 q29 q30 q31 q32 q33 q34 q35"),
    "F": _slots("q36 q37 q38 q39 q40 q41 q42"),
    "G": _slots("q43 q44 q45 q46 q47 q08 q48"),
    "H": _slots("q04 q49 q50 q51 q52 q53 q54"),
    "I": _slots("q55 q56 q57 q58 q59 q60 q61"),
}

_BY_CODE_2009 = {i.code: i for i in _ITEMS_2009}
#: 2025 code -> the 2009 question it reuses (§1.4)
SHORT_FORM_SOURCE: MappingProxyType[str, str] = MappingProxyType(
    {
        "s01": "q01",
        "s02": "q02",
        "s03": "q04",
        "s04": "q05",
        "s05": "q09",
        "s06": "q10",
        "s07": "q16",
        "s08": "q17",
        "s09": "q21",
        "s10": "q22",
        "s11": "q25",
        "s12": "q29",
        "s13": "q30",
        "s14": "q33",
        "s15": "q36",
        "s16": "q40",
        "s17": "q41",
        "s18": "q42",
        "s19": "q45",
        "s20": "q46",
        "s21": "q48",
        "s22": "q49",
        "s23": "q50",
        "s24": "q55",
        "s25": "q58",
        "s26": "q59",
        "s27": "q61",
    }
)
_ITEMS_2025 = tuple(
    Item(code, _BY_CODE_2009[src].label, _QUESTIONS_2025[code], _BY_CODE_2009[src].sex)
    for code, src in SHORT_FORM_SOURCE.items()
)
# §1.4
_TYPES_2025 = {
    "A": _slots("s01 s02* s03* s04*"),
    "B": _slots("s02 s05 s06"),
    "C": _slots("s07 s08 s04"),
    "D": _slots("s09 s10 s11"),
    "E": _slots("s12 s13 s14"),
    "F": _slots("s15 s16 s17 s18"),
    "G": _slots("s19 s20 s21"),
    "H": _slots("s03 s22 s23"),
    "I": _slots("s24 s25 s26 s27"),
}

CCMQ_2009 = Form(
    key="zyyxh-t157-2009",
    title="中医体质分类与判定表 (ZYYXH/T157-2009)",
    display="中华中医药学会标准 ZYYXH/T157-2009《中医体质分类与判定》（60 条目问卷）",
    questionnaire_id="questionnaire-ccmq-2009",
    item_system_id="tcm-ccmq-2009-item",
    items=_ITEMS_2009,
    types=MappingProxyType(_TYPES_2009),
)
CCMQ_2025 = Form(
    key="gbt-46939-2025",
    title="中医体质分类与判定 简表 (GB/T 46939-2025)",
    display="GB/T 46939-2025《中医体质分类与判定》（简表）",
    questionnaire_id="questionnaire-ccmq-2025",
    item_system_id="tcm-ccmq-2025-item",
    items=_ITEMS_2025,
    types=MappingProxyType(_TYPES_2025),
)
FORMS: tuple[Form, ...] = (CCMQ_2009, CCMQ_2025)

_ITEM_INDEX = {form.key: {i.code: i for i in form.items} for form in FORMS}


def form_for_questionnaire(canonical: str) -> Form | None:
    """The form a ``QuestionnaireResponse.questionnaire`` canonical names (``|version`` ignored)."""
    url = canonical.split("|", 1)[0]
    return next((f for f in FORMS if f.questionnaire_url == url), None)


def form_by_key(key: str) -> Form | None:
    return next((f for f in FORMS if f.key == key), None)
