"""The demo network of ``fhir-server serve --demo``: a provincial telemedicine network to look at.

Why stored through the repository rather than shipped as a Bundle: the demo must be what the
product makes of real input — consultation numbers assigned, grants derived from the requests and
consents, state-machine Tasks, the tenancy columns of every row — so it is written the way the
platform's own client writes, through the same hooks, once (the centre's Organization marks it
loaded). Every name is bilingual, Chinese first.

What it holds: the provincial centre (the platform's institution, which pre-reviews), two expert
hospitals (Western and TCM), three primary-care and TCM clinics; experts and general practitioners
with their roles, the experts' schedules and free slots for the coming working days; patients
with their consent to collection and to sharing with the hospitals; a consultation in every
business state of the machine (with opinions and a report where it has them), a multi-centre
consultation with its invitations, a TCM constitution diagnosis request, a referral up, and the
follow-up plan of the evaluated consultation (its first follow-up due within a day, so it is
reminded at once). Each patient's community clinic is their ``generalPractitioner``. With
auth on, one account per role, all with the password ``DEMO_PASSWORD``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from fhir_server.storage.repository import Session
from fhir_server.workflow import machine as m

log = logging.getLogger(__name__)

CN = "http://fhir.telefhir.cn"
CENTRE = "demo-centre"
DEMO_PASSWORD = "Demo-Passw0rd!"
CHINA = timezone(timedelta(hours=8))
SERVICE = m.SERVICE_TYPES
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
WORKFLOW = f"{CN}/CodeSystem/consultation-workflow"

#: id, Chinese name, English name, kind
ORGANIZATIONS = (
    (CENTRE, "浙江省远程医疗中心", "Zhejiang Provincial Telemedicine Centre", "prov"),
    ("demo-hospital", "浙江省人民医院", "Zhejiang Provincial People's Hospital", "prov"),
    ("demo-tcm-hospital", "浙江省中医院", "Zhejiang Provincial Hospital of TCM", "prov"),
    ("demo-clinic-xihu", "西湖区社区卫生服务中心", "Xihu Community Health Centre", "team"),
    ("demo-clinic-tonglu", "桐庐县中医诊所", "Tonglu County TCM Clinic", "team"),
    ("demo-clinic-jiande", "建德市乡镇卫生院", "Jiande Township Health Centre", "team"),
)
#: id, family, given, English name, organization, specialty, expert?
PRACTITIONERS = (
    ("demo-expert-li", "李", "明华", "Dr Li Minghua (cardiology)", "demo-hospital", "心内科 Cardiology", True),
    ("demo-expert-chen", "陈", "静", "Dr Chen Jing (endocrinology)", "demo-hospital", "内分泌科 Endocrinology", True),
    ("demo-expert-wang", "王", "国强", "Dr Wang Guoqiang (TCM internal medicine)", "demo-tcm-hospital",
     "中医内科 TCM internal medicine", True),
    ("demo-expert-zhao", "赵", "雪梅", "Dr Zhao Xuemei (TCM constitution)", "demo-tcm-hospital",
     "中医体质 TCM constitution", True),
    ("demo-gp-zhang", "张", "小红", "Dr Zhang Xiaohong (general practice)", "demo-clinic-xihu",
     "全科 General practice", False),
    ("demo-gp-liu", "刘", "伟", "Dr Liu Wei (TCM general practice)", "demo-clinic-tonglu",
     "中医全科 TCM general practice", False),
    ("demo-gp-sun", "孙", "丽", "Dr Sun Li (general practice)", "demo-clinic-jiande", "全科 General practice", False),
)  # fmt: skip
#: id, family, given, gender, birth date, home clinic
PATIENTS = (
    ("demo-patient-1", "王", "秀英", "female", "1956-03-12", "demo-clinic-xihu"),
    ("demo-patient-2", "李", "建国", "male", "1949-10-01", "demo-clinic-xihu"),
    ("demo-patient-3", "周", "敏", "female", "1978-07-23", "demo-clinic-tonglu"),
    ("demo-patient-4", "吴", "志刚", "male", "1965-01-30", "demo-clinic-tonglu"),
    ("demo-patient-5", "郑", "芳", "female", "1990-11-05", "demo-clinic-jiande"),
    ("demo-patient-6", "黄", "德明", "male", "1941-05-18", "demo-clinic-jiande"),
)
#: username, role, organization, fhirUser
ACCOUNTS = (
    ("demo-doctor", "requesting-doctor", "demo-clinic-xihu", "Practitioner/demo-gp-zhang"),
    ("demo-expert", "expert", "demo-hospital", "Practitioner/demo-expert-li"),
    ("demo-tcm-expert", "expert", "demo-tcm-hospital", "Practitioner/demo-expert-wang"),
    ("demo-scheduler", "scheduler", CENTRE, None),
    ("demo-supervisor", "supervisor", CENTRE, None),
    ("demo-hospital-admin", "participating-institution-admin", "demo-hospital", None),
    ("demo-auditor", "auditor", CENTRE, None),
)
#: the consultations of the demo: (business status, patient, requester clinic, performer, reason)
CONSULTATIONS = tuple(
    (state, PATIENTS[i % len(PATIENTS)][0], PATIENTS[i % len(PATIENTS)][5], performer, reason)
    for i, (state, performer, reason) in enumerate(
        (
            ("applied", "demo-hospital", "胸闷气短两周 Chest tightness for two weeks"),
            ("pre-reviewed", "demo-hospital", "血压控制不佳 Poorly controlled blood pressure"),
            ("accepted", "demo-tcm-hospital", "失眠多梦 Insomnia with vivid dreams"),
            ("rejected", "demo-hospital", "资料不全 Incomplete records"),
            ("scheduled", "demo-hospital", "血糖波动 Fluctuating blood glucose"),
            ("in-progress", "demo-tcm-hospital", "慢性胃痛 Chronic stomach ache"),
            ("reported", "demo-hospital", "心律不齐 Irregular heartbeat"),
            ("reviewed", "demo-tcm-hospital", "乏力自汗 Fatigue and spontaneous sweating"),
            ("published", "demo-hospital", "术后随访 Post-operative follow-up"),
            ("evaluated", "demo-tcm-hospital", "慢性咳嗽 Chronic cough"),
            ("cancelled", "demo-hospital", "患者已转院 Patient transferred"),
        )
    )
)


def is_loaded(session: Session) -> bool:
    current = session.read_current("Organization", CENTRE)
    return current is not None and not current.deleted


def load(repo: Any, security: Any = None) -> bool:
    """Store the demo network unless it is there; True when it was stored now."""
    with repo.session(write=True) as session:
        if is_loaded(session):
            return False
        for resource in resources(datetime.now(CHINA).replace(microsecond=0)):
            session.create(resource, resource.pop("id"))
    if security is not None:
        _accounts(security)
    log.warning(
        "demo network loaded: %d institutions, %d patients, %d consultations; accounts %s (password %s)",
        len(ORGANIZATIONS), len(PATIENTS), len(CONSULTATIONS) + 3, ", ".join(a[0] for a in ACCOUNTS), DEMO_PASSWORD,
    )  # fmt: skip
    return True


def _accounts(security: Any) -> None:
    for username, role, org, fhir_user in ACCOUNTS:
        if security.users.get(username) is None:
            security.users.create(
                username, DEMO_PASSWORD, organization=f"Organization/{org}", roles=(role,), fhir_user=fhir_user
            )


# -- the resources ------------------------------------------------------------------------------
def resources(today: datetime) -> list[dict[str, Any]]:
    """Every resource of the demo network, in an order that stores (referenced before referring)."""
    out: list[dict[str, Any]] = []
    for org_id, zh, en, kind in ORGANIZATIONS:
        out.append({
            "resourceType": "Organization", "id": org_id, "active": True, "name": f"{zh} {en}", "alias": [zh, en],
            "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": kind}]}],
            **({"partOf": {"reference": f"Organization/{CENTRE}"}} if org_id != CENTRE else {}),
        })  # fmt: skip
    for pid, family, given, en, org, specialty, _expert in PRACTITIONERS:
        out.append({
            "resourceType": "Practitioner", "id": pid, "active": True,
            "name": [{"use": "official", "text": f"{family}{given}", "family": family, "given": [given]},
                     {"use": "usual", "text": en}],
        })  # fmt: skip
        out.append({
            "resourceType": "PractitionerRole", "id": f"{pid}-role", "active": True,
            "practitioner": {"reference": f"Practitioner/{pid}", "display": f"{family}{given}"},
            "organization": {"reference": f"Organization/{org}"},
            "specialty": [{"text": specialty}],
        })  # fmt: skip
    out += _schedules(today)
    for pid, family, given, gender, birth, clinic in PATIENTS:
        out.append({
            "resourceType": "Patient", "id": pid, "active": True, "gender": gender, "birthDate": birth,
            "name": [{"use": "official", "text": f"{family}{given}", "family": family, "given": [given]}],
            "managingOrganization": {"reference": f"Organization/{clinic}"},
            "generalPractitioner": [{"reference": f"Organization/{clinic}"}],
        })  # fmt: skip
        out.append(_consent(pid, clinic))
    for n, (state, patient, clinic, performer, reason) in enumerate(CONSULTATIONS, start=1):
        out += _consultation(n, state, patient, clinic, performer, reason, today)
    out += _multicentre(today)
    out += _diagnosis_and_referral(today)
    return out


def _schedules(today: datetime) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for pid, family, given, _en, _org, specialty, expert in PRACTITIONERS:
        if not expert:
            continue
        out.append({
            "resourceType": "Schedule", "id": f"{pid}-schedule", "active": True,
            "actor": [{"reference": f"Practitioner/{pid}", "display": f"{family}{given}"}],
            "serviceType": [{"coding": [{"system": SERVICE, "code": "teleconsultation-online"}]}],
            "comment": f"{family}{given} {specialty} 远程会诊出诊 teleconsultation hours",
        })  # fmt: skip
        day, added = today, 0
        while added < 5:
            day += timedelta(days=1)
            if day.weekday() >= 5:
                continue
            added += 1
            for half_hour in range(4):
                start = day.replace(hour=9, minute=0, second=0, microsecond=0) + timedelta(minutes=30 * half_hour)
                out.append({
                    "resourceType": "Slot", "id": f"{pid}-{start:%Y%m%d%H%M}",
                    "schedule": {"reference": f"Schedule/{pid}-schedule"}, "status": "free",
                    "start": start.isoformat(), "end": (start + timedelta(minutes=30)).isoformat(),
                    "serviceType": [{"coding": [{"system": SERVICE, "code": "teleconsultation-online"}]}],
                })  # fmt: skip
    return out


def _consent(patient: str, clinic: str) -> dict[str, Any]:
    hospitals = [o[0] for o in ORGANIZATIONS if o[3] == "prov"]
    return {
        "resourceType": "Consent", "id": f"{patient}-consent", "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "organization": [{"reference": f"Organization/{clinic}"}],
        "provision": {"type": "deny", "provision": [
            {"type": "permit", "action": [{"coding": [{"code": "collect"}]}]},
            *({"type": "permit", "action": [{"coding": [{"code": "disclose"}]}],
               "actor": [{"role": {"text": "recipient"}, "reference": {"reference": f"Organization/{org}"}}]}
              for org in hospitals + [o[0] for o in ORGANIZATIONS if o[3] == "team"]),
        ]},
    }  # fmt: skip


def _request(
    rid: str,
    code: str,
    patient: str,
    clinic: str,
    performers: list[str],
    reason: str,
    when: datetime,
    authored: datetime,
    profile: str | None = "consultation-request",
) -> dict[str, Any]:
    display = {"teleconsultation-online": "实时远程会诊", "teleconsultation-multicentre": "多中心远程会诊"}.get(code)
    category = "teleconsultation" if code.startswith("teleconsultation") else code
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest", "id": rid, "status": "active", "intent": "order",
        "category": [{"coding": [{"system": SERVICE, "code": category}]}],
        "code": {"coding": [{"system": SERVICE, "code": code, **({"display": display} if display else {})}]},
        "subject": {"reference": f"Patient/{patient}"},
        "occurrenceDateTime": when.isoformat(), "authoredOn": authored.isoformat(),
        "requester": {"reference": f"Organization/{clinic}"},
        "performer": [{"reference": f"Organization/{p}"} for p in performers],
        "reasonCode": [{"text": reason}],
    }  # fmt: skip
    if profile:
        request["meta"] = {"profile": [f"{CN}/StructureDefinition/{profile}"]}
    return request


def _task(tid: str, request: dict[str, Any], owner: str, state: str, authored: datetime) -> dict[str, Any]:
    modified = authored if state == m.INITIAL else authored + timedelta(hours=1)
    task: dict[str, Any] = {
        "resourceType": "Task", "id": tid, "meta": {"profile": [f"{CN}/StructureDefinition/consultation-task"]},
        "basedOn": [{"reference": f"ServiceRequest/{request['id']}"}],
        "status": m.TASK_STATUS[state], "businessStatus": {"coding": [{"system": m.SYSTEM, "code": state}]},
        "intent": "order", "code": request["code"], "focus": {"reference": f"ServiceRequest/{request['id']}"},
        "for": request["subject"], "authoredOn": authored.isoformat(), "lastModified": modified.isoformat(),
        "requester": request["requester"], "owner": {"reference": f"Organization/{owner}"},
    }  # fmt: skip
    if state == "rejected":
        task["statusReason"] = {"text": "病历资料不全，请补充后重新申请 Records incomplete: complete them, apply again"}
    return task


def _opinion(oid: str, request: dict[str, Any], expert: str, text: str, when: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": oid, "status": "final",
        "category": [{"coding": [{"system": SERVICE, "code": "teleconsultation-online"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "11488-4", "display": "Consult note"}]},
        "basedOn": [{"reference": f"ServiceRequest/{request['id']}"}], "subject": request["subject"],
        "performer": [{"reference": f"PractitionerRole/{expert}-role"}],
        "effectiveDateTime": when.isoformat(), "issued": when.isoformat(), "valueString": text,
    }  # fmt: skip


def _consultation(n: int, state: str, patient: str, clinic: str, performer: str, reason: str,
                  today: datetime) -> list[dict[str, Any]]:  # fmt: skip
    authored = today - timedelta(days=12 - n)
    when = today + timedelta(days=n % 5 + 1)
    request = _request(
        f"demo-consult-{n}", "teleconsultation-online", patient, clinic, [performer], reason, when, authored
    )
    if state in ("evaluated", "published"):
        request["status"] = "completed"
    elif state in ("cancelled", "rejected"):
        request["status"] = "revoked"
    task = _task(f"demo-consult-{n}-task", request, performer, state, authored)
    out: list[dict[str, Any]] = [request]
    if state == "evaluated":  # the requester's evaluation (workflow/evaluation.py), stored before its Task
        response = _evaluation(f"demo-consult-{n}-evaluation", request)
        out.append(response)
        reference = {"reference": f"QuestionnaireResponse/{response['id']}"}
        task["output"] = [
            {"type": {"coding": [{"system": WORKFLOW, "code": "evaluation"}]}, "valueReference": reference}
        ]
    out.append(task)
    if state == "evaluated":
        out.append(_follow_up(f"demo-consult-{n}-follow-up", request, today))
    expert = "demo-expert-li" if performer == "demo-hospital" else "demo-expert-wang"
    if m.TASK_STATUS[state] in ("in-progress", "completed") and state != "in-progress":
        out.append(_opinion(f"demo-consult-{n}-opinion", request, expert,
                            "建议完善相关检查，调整用药，两周后复诊。Complete the work-up, adjust the medication, "
                            "review in two weeks.", when))  # fmt: skip
    return out


def _follow_up(rid: str, request: dict[str, Any], today: datetime) -> dict[str, Any]:
    """The requester's follow-up plan (workflow/follow_up.py): a revisit tomorrow morning, then a
    monthly phone call, three times."""
    revisit = (today + timedelta(hours=20)).isoformat()
    calls = {"boundsPeriod": {"start": (today + timedelta(days=30)).isoformat()}, "period": 1, "periodUnit": "mo",
             "count": 3}  # fmt: skip
    return {
        "resourceType": "CarePlan", "id": rid, "status": "active", "intent": "plan",
        "category": [{"coding": [{"system": WORKFLOW, "code": "follow-up", "display": "随访计划 Follow-up plan"}]}],
        "title": "会诊后随访 Follow-up after the consultation", "subject": request["subject"],
        "author": request["requester"], "supportingInfo": [{"reference": f"ServiceRequest/{request['id']}"}],
        "activity": [
            {"detail": {"status": "scheduled", "description": "门诊复诊 Outpatient revisit",
                        "performer": [request["requester"]], "scheduledPeriod": {"start": revisit}}},
            {"detail": {"status": "scheduled", "description": "电话随访 Phone follow-up",
                        "performer": [request["requester"]], "scheduledTiming": {"repeat": calls}}},
        ],
    }  # fmt: skip


def _evaluation(rid: str, request: dict[str, Any]) -> dict[str, Any]:
    answers = {"satisfaction": {"valueInteger": 5}, "rating": {"valueInteger": 5},
               "concordance": {"valueCoding": {"system": WORKFLOW, "code": "partially-concordant"}},
               "comment": {"valueString": "会诊及时，建议明确。Timely, with clear advice."}}  # fmt: skip
    return {
        "resourceType": "QuestionnaireResponse", "id": rid, "status": "completed",
        "questionnaire": f"{CN}/Questionnaire/consultation-evaluation", "subject": request["subject"],
        "author": request["requester"],
        "item": [{"linkId": link, "answer": [answer]} for link, answer in answers.items()],
    }  # fmt: skip


def _multicentre(today: datetime) -> list[dict[str, Any]]:
    authored = today - timedelta(hours=30)
    participants = ["demo-hospital", "demo-tcm-hospital", "demo-clinic-tonglu"]
    request = _request("demo-multicentre", "teleconsultation-multicentre", "demo-patient-2", "demo-clinic-xihu",
                       participants, "复杂病例多学科讨论 Complex case for a multi-centre discussion",
                       today + timedelta(days=2), authored)  # fmt: skip
    request["orderDetail"] = [{"coding": [{"system": f"{CN}/CodeSystem/data-category", "code": c}]}
                              for c in ("clinical", "examination", "imaging")]  # fmt: skip
    out: list[dict[str, Any]] = [request]
    for i, (owner, state) in enumerate(zip(participants, ("accepted", "accepted", "applied"), strict=True)):
        task = _task(f"demo-multicentre-invitation-{i + 1}", request, owner, state, authored)
        task["restriction"] = {"period": {"end": (authored + timedelta(hours=24)).isoformat()}}  # the last is overdue
        out.append(task)
    return out


def _diagnosis_and_referral(today: datetime) -> list[dict[str, Any]]:
    tcm = _request("demo-tcm-diagnosis", "tcm-constitution-identification", "demo-patient-3", "demo-clinic-tonglu",
                   ["demo-tcm-hospital"], "中医体质辨识 TCM constitution identification", today + timedelta(days=1),
                   today - timedelta(days=1), profile=None)  # fmt: skip
    referral = _request("demo-referral-up", "referral-up", "demo-patient-6", "demo-clinic-jiande", ["demo-hospital"],
                        "疑似急性冠脉综合征，上转 Suspected acute coronary syndrome: referred up",
                        today + timedelta(days=1), today, profile=None)  # fmt: skip
    return [
        tcm, _task("demo-tcm-diagnosis-task", tcm, "demo-tcm-hospital", "accepted", today - timedelta(days=1)),
        referral, _task("demo-referral-up-task", referral, "demo-hospital", "applied", today),
    ]  # fmt: skip
