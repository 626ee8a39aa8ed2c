"""Data categories: which of the consultation standard's six kinds of data a resource is.

Why categories and not resource types: the standard grants and limits access "by data category
and by patient scope" (001 §8.1.2), and a consultation shares "所需数据清单", a list of the six
categories of 001 表1 (patient, clinical diagnosis, examinations and tests, imaging, treatment,
consultation), not of FHIR types. Every stored row carries its category as one bit
(``resources.category``), so a grant, a role or a consent limited to some categories is one
``&`` in SQL (security/tenancy.py). Two more bits name what is not patient data: the shared
catalogue (conformance, terminology and the directory of institutions and experts, readable by
every signed-in principal) and the institution's own administrative records.

An Observation or DiagnosticReport is sorted by its ``category`` (laboratory → examinations,
imaging → imaging); other types by the tables below; a type in the Patient compartment that the
tables do not name is clinical, any other unnamed type administrative.
"""

from __future__ import annotations

from typing import Any

PATIENT = 1  # 患者基本信息
CLINICAL = 2  # 临床诊断信息
EXAMINATION = 4  # 检验检查信息
IMAGING = 8  # 影像数据
TREATMENT = 16  # 治疗相关信息
CONSULTATION = 32  # 会诊相关信息
ADMINISTRATIVE = 64  # the institution's own records (consents, accounts, groups)
CATALOGUE = 128  # conformance, terminology, directory: readable by everyone signed in

#: the code of each category in http://fhir.telefhir.cn/CodeSystem/data-category
CODES: dict[str, int] = {
    "patient": PATIENT,
    "clinical": CLINICAL,
    "examination": EXAMINATION,
    "imaging": IMAGING,
    "treatment": TREATMENT,
    "consultation": CONSULTATION,
    "administrative": ADMINISTRATIVE,
    "catalogue": CATALOGUE,
}
NAMES: dict[int, str] = {bit: code for code, bit in CODES.items()}
SYSTEM = "http://fhir.telefhir.cn/CodeSystem/data-category"
#: the categories that are a patient's health data (what a consultation may share)
PATIENT_DATA = PATIENT | CLINICAL | EXAMINATION | IMAGING | TREATMENT | CONSULTATION
ALL = PATIENT_DATA | ADMINISTRATIVE | CATALOGUE

_BY_TYPE: dict[str, int] = {}
for _category, _types in (
    (PATIENT, "Patient RelatedPerson Person"),
    (
        CLINICAL,
        "Condition AllergyIntolerance Encounter EpisodeOfCare ClinicalImpression FamilyMemberHistory "
        "QuestionnaireResponse Observation Flag DetectedIssue RiskAssessment Goal AdverseEvent BodyStructure "
        "DocumentReference DocumentManifest Binary List",
    ),
    (EXAMINATION, "DiagnosticReport Specimen MolecularSequence"),
    (IMAGING, "ImagingStudy Media"),
    (
        TREATMENT,
        "MedicationRequest MedicationStatement MedicationAdministration MedicationDispense Procedure Immunization "
        "ImmunizationEvaluation ImmunizationRecommendation CarePlan CareTeam NutritionOrder DeviceRequest "
        "DeviceUseStatement VisionPrescription SupplyRequest SupplyDelivery RequestGroup",
    ),
    (
        CONSULTATION,
        "ServiceRequest Task Communication CommunicationRequest Appointment AppointmentResponse Composition Provenance",
    ),
    (
        ADMINISTRATIVE,
        "Consent Account Coverage CoverageEligibilityRequest CoverageEligibilityResponse Claim ClaimResponse "
        "ChargeItem Invoice ExplanationOfBenefit EnrollmentRequest EnrollmentResponse PaymentNotice "
        "PaymentReconciliation Contract Group Basic ResearchSubject MeasureReport Subscription MessageHeader "
        "Bundle Linkage AuditEvent",
    ),
    (
        CATALOGUE,
        # conformance and knowledge
        "CapabilityStatement StructureDefinition ImplementationGuide SearchParameter OperationDefinition "
        "CompartmentDefinition StructureMap GraphDefinition ExampleScenario MessageDefinition NamingSystem "
        "TerminologyCapabilities CodeSystem ValueSet ConceptMap Questionnaire PlanDefinition ActivityDefinition "
        "Library Measure EventDefinition ObservationDefinition SpecimenDefinition ChargeItemDefinition "
        "ResearchDefinition ResearchElementDefinition Evidence EvidenceVariable EffectEvidenceSynthesis "
        "RiskEvidenceSynthesis TestScript TestReport CatalogEntry "
        # medicines and devices as products
        "Medication MedicationKnowledge Substance SubstanceNucleicAcid SubstancePolymer SubstanceProtein "
        "SubstanceReferenceInformation SubstanceSourceMaterial SubstanceSpecification MedicinalProduct "
        "MedicinalProductAuthorization MedicinalProductContraindication MedicinalProductIndication "
        "MedicinalProductIngredient MedicinalProductInteraction MedicinalProductManufactured "
        "MedicinalProductPackaged MedicinalProductPharmaceutical MedicinalProductUndesirableEffect "
        "DeviceDefinition BiologicallyDerivedProduct InsurancePlan "
        # the directory (mCSD) and the experts' schedules
        "Organization OrganizationAffiliation Practitioner PractitionerRole Location HealthcareService Endpoint "
        "Schedule Slot Device DeviceMetric ResearchStudy",
    ),
):
    for _name in _types.split():
        _BY_TYPE[_name] = _category

#: the catalogue an institution keeps for itself (its directory entries and experts' schedules);
#: the rest of the catalogue (conformance, terminology, knowledge) is the platform's to curate
DIRECTORY = frozenset(
    "Organization OrganizationAffiliation Practitioner PractitionerRole Location HealthcareService Endpoint "
    "Schedule Slot Device DeviceMetric".split()
)

#: the platform's services: an Observation in this category is part of a consultation
SERVICE_TYPES = "http://fhir.telefhir.cn/CodeSystem/telemedicine-service-type"
_OBSERVATION_CATEGORY = {"laboratory": EXAMINATION, "imaging": IMAGING, "procedure": TREATMENT}
_REPORT_CATEGORY = {  # v2-0074 diagnostic service sections
    "RAD": IMAGING,
    "CT": IMAGING,
    "MR": IMAGING,
    "US": IMAGING,
    "NMR": IMAGING,
    "RX": IMAGING,
    "VUS": IMAGING,
    "XRC": IMAGING,
    "CUS": IMAGING,
    "NMS": IMAGING,
    "OUS": IMAGING,
}


def of_type(res_type: str, in_patient_compartment: bool) -> int:
    """The category of a resource type when its content does not refine it."""
    category = _BY_TYPE.get(res_type)
    if category is not None:
        return category
    return CLINICAL if in_patient_compartment else ADMINISTRATIVE


def possible(res_type: str, in_patient_compartment: bool) -> int:
    """Every category a resource of this type can fall in (the mask a permission check on the
    type, before the content is known, must consider)."""
    if res_type == "Observation":
        return CLINICAL | EXAMINATION | IMAGING | TREATMENT | CONSULTATION
    if res_type == "DiagnosticReport":
        return EXAMINATION | IMAGING
    if res_type in ("Bundle", "DocumentReference"):  # documents of a consultation
        return of_type(res_type, in_patient_compartment) | CONSULTATION
    return of_type(res_type, in_patient_compartment)


def of_resource(resource: dict[str, Any], in_patient_compartment: bool) -> int:
    res_type = resource["resourceType"]
    if res_type == "Observation":
        if _has_system(resource.get("category"), SERVICE_TYPES):
            return CONSULTATION  # an expert's opinion in a consultation (consultation-opinion profile)
        for code in _codes(resource.get("category")):
            if code in _OBSERVATION_CATEGORY:
                return _OBSERVATION_CATEGORY[code]
        if _answers_a_request(resource):
            return EXAMINATION  # a finding made for a request (a diagnosis request's result): it goes back
    elif res_type == "DiagnosticReport":
        for code in _codes(resource.get("category")):
            if code in _REPORT_CATEGORY:
                return _REPORT_CATEGORY[code]
    elif res_type == "Bundle" and (resource.get("type") == "document" or is_archive(resource)):
        return CONSULTATION  # a published report (workflow/documents.py), a consultation's archive
    elif res_type == "DocumentReference" and _about_a_request(resource):
        return CONSULTATION  # the index entry of a request's report: it goes where the report goes
    return of_type(res_type, in_patient_compartment)


#: the tag of a consultation's archive Bundle (workflow/case_package.py)
ARCHIVE_TAG = ("http://fhir.telefhir.cn/CodeSystem/consultation-workflow", "consultation-archive")


def _answers_a_request(resource: dict[str, Any]) -> bool:
    return any(
        isinstance(b, dict) and str(b.get("reference", "")).startswith("ServiceRequest/")
        for b in resource.get("basedOn") or ()
    )


def is_archive(bundle: dict[str, Any]) -> bool:
    """A consultation's archive (workflow/case_package.py): a collection Bundle tagged consultation-archive."""
    tags = (bundle.get("meta") or {}).get("tag") or ()
    return bundle.get("type") == "collection" and any(
        isinstance(t, dict) and (t.get("system"), t.get("code")) == ARCHIVE_TAG for t in tags
    )


def _about_a_request(reference: dict[str, Any]) -> bool:
    context = reference.get("context")
    related = context.get("related") if isinstance(context, dict) else None
    return any(
        isinstance(r, dict) and str(r.get("reference", "")).startswith(("ServiceRequest/", "Composition/"))
        for r in related or ()
    )


def describe(mask: int) -> str:
    """``"clinical, imaging"``: the categories of a mask, for messages."""
    return ", ".join(name for bit, name in NAMES.items() if mask & bit) or "none"


def _has_system(concepts: Any, system: str) -> bool:
    return any(
        isinstance(coding, dict) and coding.get("system") == system
        for concept in (concepts if isinstance(concepts, list) else [])
        for coding in (concept.get("coding", []) if isinstance(concept, dict) else [])
    )


def _codes(concepts: Any) -> list[str]:
    out = []
    for concept in concepts if isinstance(concepts, list) else []:
        for coding in concept.get("coding", []) if isinstance(concept, dict) else []:
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                out.append(coding["code"])
    return out
