"""Data quality of a multi-centre consultation's case data: completeness of the core data elements.

Why these elements: 001 表1 names the core data elements (核心数据元) of each kind of data that
institutions exchange in a multi-centre consultation, and §5 requires their completeness to be at
least 99 % (non-core ≥ 95 %); §7.5 b) sends data that falls short back to its sender as a
correction request. Each element below is one of 表1's, located in the FHIR resource that carries
it; a resource type not listed holds no core element and does not count.

The check runs on the data as stored (the platform checks it, not a receiver that sees it
de-identified: a masked phone number is present, a missing one is not), and what it reports names
elements and resource ids only, never values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

#: 001 §5 a): core data elements at least 99 % complete
CORE_THRESHOLD = 0.99

Present = Callable[[dict[str, Any]], bool]
CN = "http://fhir.telefhir.cn/StructureDefinition"


def _has(*paths: str) -> Present:
    """Present when any of the top-level elements (``value`` matches ``valueQuantity`` …) has a value."""

    def check(resource: dict[str, Any]) -> bool:
        for path in paths:
            if path.endswith("[x]"):
                stem = path[:-3]
                if any(k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper() and resource[k] for k in resource):
                    return True
            elif resource.get(path) not in (None, "", [], {}):
                return True
        return False

    return check


def _extension(url: str) -> Present:
    return lambda r: any(isinstance(e, dict) and e.get("url") == url for e in r.get("extension") or ())


def _reference_range(observation: dict[str, Any]) -> bool:
    """A quantitative result needs its reference range; a coded or text one has none."""
    if "valueQuantity" not in observation:
        return True
    return bool(observation.get("referenceRange"))


#: resource type -> (element as 表1 names it, FHIR location, its presence test)
CORE_ELEMENTS: dict[str, tuple[tuple[str, str, Present], ...]] = {
    "Patient": (
        ("患者唯一标识 patient identifier", "Patient.identifier", _has("identifier")),
        ("姓名 name", "Patient.name", _has("name")),
        ("性别 sex", "Patient.gender", _has("gender")),
        ("年龄 age", "Patient.birthDate", _has("birthDate")),
        ("联系方式 contact", "Patient.telecom", _has("telecom")),
        ("民族 ethnicity", "Patient.extension:ethnicity", _extension(f"{CN}/cn-ethnicity")),
        ("籍贯 native place", "Patient.extension:nativePlace", _extension(f"{CN}/cn-native-place")),
    ),
    "Condition": (
        ("诊断 diagnosis", "Condition.code", _has("code")),
        ("诊断时间 time", "Condition.onset[x] | Condition.recordedDate", _has("onset[x]", "recordedDate")),
        ("诊断依据 basis", "Condition.evidence | Condition.note", _has("evidence", "note")),
    ),
    "Observation": (
        ("项目名称 item", "Observation.code", _has("code")),
        ("结果 result", "Observation.value[x] | Observation.component", _has("value[x]", "component")),
        ("参考范围 reference range", "Observation.referenceRange", _reference_range),
        ("时间 time", "Observation.effective[x] | Observation.issued", _has("effective[x]", "issued")),
        ("机构 institution", "Observation.performer", _has("performer")),
    ),
    "DiagnosticReport": (
        ("项目名称 item", "DiagnosticReport.code", _has("code")),
        (
            "结论 conclusion",
            "DiagnosticReport.conclusion | DiagnosticReport.conclusionCode",
            _has("conclusion", "conclusionCode"),
        ),
        ("时间 time", "DiagnosticReport.effective[x] | DiagnosticReport.issued", _has("effective[x]", "issued")),
        ("机构 institution", "DiagnosticReport.performer", _has("performer")),
    ),
    "ImagingStudy": (
        ("影像文件 images", "ImagingStudy.series", _has("series")),
        ("检查时间 time", "ImagingStudy.started", _has("started")),
        (
            "检查项目 procedure",
            "ImagingStudy.procedureCode | ImagingStudy.description",
            _has("procedureCode", "description"),
        ),
    ),
    "MedicationStatement": (
        ("药品 medication", "MedicationStatement.medication[x]", _has("medication[x]")),
        ("用药时间 time", "MedicationStatement.effective[x]", _has("effective[x]")),
    ),
    "Procedure": (
        ("手术/治疗 procedure", "Procedure.code", _has("code")),
        ("时间 time", "Procedure.performed[x]", _has("performed[x]")),
    ),
}


@dataclass
class QualityReport:
    """How complete the core elements of some resources are, and which are missing where."""

    expected: int = 0
    present: int = 0
    #: ``Patient/p1: 联系方式 contact (Patient.telecom)`` for each missing element
    missing: list[str] = field(default_factory=list)

    @property
    def completeness(self) -> float:
        """The share of core elements present; 1.0 when there is nothing to judge."""
        return self.present / self.expected if self.expected else 1.0

    @property
    def passed(self) -> bool:
        return self.completeness >= CORE_THRESHOLD

    def percent(self) -> str:
        return f"{self.completeness * 100:.1f} %"


def check(resources: Iterable[dict[str, Any]]) -> QualityReport:
    """The completeness of the core elements of ``resources`` (as stored)."""
    report = QualityReport()
    for resource in resources:
        res_type = resource.get("resourceType")
        for label, location, present in CORE_ELEMENTS.get(str(res_type), ()):
            report.expected += 1
            if present(resource):
                report.present += 1
            else:
                report.missing.append(f"{res_type}/{resource.get('id')}: {label} ({location})")
    return report
