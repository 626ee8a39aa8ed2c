"""Generate the ImplementationGuide resource and its index page from ``profiles/`` and ``terminology/``.

Why generated: the guide (``profiles/implementationguide-telefhir.json``, stored at start like
every packaged resource) and its page (``docs/implementation-guide.md``) list every profile,
extension, operation, code system, value set, concept map and example; written by hand they
would drift from the files. The guide's ``global`` entries are the rules that require a
profile of resources that do not claim it (fhir_server/validation/rules.py), listed in RULES
below. ``tests/unit/test_implementation_guide.py`` fails when either output is stale.

Usage: ``python scripts/gen_implementation_guide.py``.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"
TERMINOLOGY = ROOT / "terminology"
GUIDE = PROFILES / "implementationguide-telefhir.json"
PAGE = ROOT / "docs" / "implementation-guide.md"
BASE = "http://fhir.telefhir.cn"
CRITERIA = f"{BASE}/StructureDefinition/global-criteria"
SERVICE_TYPES = f"{BASE}/CodeSystem/telemedicine-service-type"

OBSERVATION_CODES = f"{BASE}/CodeSystem/tcm-observation-code"


def _coded(element: str, system: str, code: str | None = None) -> str:
    which = f"system = '{system}'" + (f" and code = '{code}'" if code else "")
    return f"{element}.coding.where({which}).exists()"


#: (resource type, profile id, FHIRPath criteria): resources the rule covers must meet the profile,
#: whether or not they claim it. A resource carrying our codes for a consultation, a referral or a
#: TCM finding is one of ours; an ECG from elsewhere is not forced into 12 leads (no rule).
RULES: list[tuple[str, str, str]] = [
    ("ServiceRequest", "consultation-request", _coded("category", SERVICE_TYPES, "teleconsultation")),
    ("ServiceRequest", "referral-request", _coded("category", SERVICE_TYPES, "referral")),
    ("Task", "consultation-task", _coded("businessStatus", f"{BASE}/CodeSystem/consultation-task-status")),
    ("Observation", "tcm-constitution-assessment", _coded("code", OBSERVATION_CODES, "constitution-assessment")),
    ("Observation", "tcm-meridian-measurement", _coded("code", OBSERVATION_CODES, "meridian-measurement")),
    ("Observation", "tcm-tongue", _coded("code", OBSERVATION_CODES, "tongue")),
    ("Observation", "tcm-pulse", _coded("code", OBSERVATION_CODES, "pulse")),
    ("Condition", "tcm-diagnosis", _coded("code", f"{BASE}/CodeSystem/gbt-15657-2021")),
]

_KINDS = {
    "StructureDefinition": "Profiles and extensions",
    "OperationDefinition": "Operations",
    "Questionnaire": "Questionnaires",
    "SearchParameter": "Search parameters",
    "NamingSystem": "Naming systems",
    "CodeSystem": "Code systems",
    "ValueSet": "Value sets",
    "ConceptMap": "Concept maps",
}


def _resources(folder: pathlib.Path, examples: bool) -> list[tuple[pathlib.Path, dict[str, Any]]]:
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.rglob("*.json")):
        is_example = "examples" in path.relative_to(folder).parts
        if is_example != examples or path == GUIDE:
            continue
        out.append((path, json.loads(path.read_text())))
    return out


def _claimed(resource: dict[str, Any]) -> list[str]:
    return [p for p in (resource.get("meta") or {}).get("profile", []) if p.startswith(BASE)]


def build() -> tuple[dict[str, Any], str]:
    definitions = _resources(PROFILES, False) + _resources(TERMINOLOGY, False)
    examples = _resources(PROFILES, True)
    urls = {r.get("url") for _, r in definitions}
    entries = []
    for _path, r in definitions:
        entries.append(
            {
                "reference": {"reference": f"{r['resourceType']}/{r['id']}"},
                "name": r.get("title") or r.get("name") or r["id"],
                **({"description": r["description"]} if r.get("description") else {}),
                "exampleBoolean": False,
            }
        )
    for _path, r in examples:
        claimed = _claimed(r)
        entries.append(
            {
                "reference": {"reference": f"{r['resourceType']}/{r['id']}"},
                "name": f"Example {r['id']}",
                **({"exampleCanonical": claimed[0]} if claimed else {"exampleBoolean": True}),
            }
        )
    rules = [
        {
            "extension": [{"url": CRITERIA, "valueString": criteria}],
            "type": t,
            "profile": f"{BASE}/StructureDefinition/{p}",
        }
        for t, p, criteria in RULES
        if f"{BASE}/StructureDefinition/{p}" in urls
    ]
    guide = {
        "resourceType": "ImplementationGuide",
        "id": "telefhir",
        "url": f"{BASE}/ImplementationGuide/telefhir",
        "version": "0.1.0",
        "name": "TelefhirImplementationGuide",
        "title": "远程会诊与中医诊疗 FHIR 实施指南 Teleconsultation and TCM FHIR Implementation Guide",
        "status": "active",
        "publisher": "telefhir",
        "description": "The profiles, extensions, operations and terminology of the telefhir server for Chinese "
        "primary-care and Traditional Chinese Medicine teleconsultation (docs/implementation-guide.md).",
        "packageId": "cn.telefhir",
        "license": "CC0-1.0",
        "fhirVersion": ["4.0.1"],
        **({"global": rules} if rules else {}),
        "definition": {"resource": entries},
    }
    return guide, _page(definitions, examples, rules)


def _page(
    definitions: list[tuple[pathlib.Path, dict[str, Any]]],
    examples: list[tuple[pathlib.Path, dict[str, Any]]],
    rules: list[dict[str, Any]],
) -> str:
    by_profile: dict[str, list[str]] = {}
    for path, r in examples:
        for url in _claimed(r):
            by_profile.setdefault(url, []).append(f"[{path.name}](../{path.relative_to(ROOT)})")
    lines = [
        "# Implementation guide: teleconsultation and TCM (`cn.telefhir` 0.1.0)",
        "",
        "Generated by `scripts/gen_implementation_guide.py` from `profiles/` and `terminology/`; do not edit.",
        f"Canonical base `{BASE}`. Every resource listed here is stored by the server at start",
        "(fhir_server/packaged.py), so it can be read and searched (`StructureDefinition?url=…`); the",
        "guide itself is `ImplementationGuide/telefhir`. How validation uses the profiles: docs/conformance.md,",
        "“Profiles”. Terminology details (sources, what is unverified): docs/terminology.md.",
        "",
    ]
    grouped: dict[str, list[tuple[pathlib.Path, dict[str, Any]]]] = {}
    for path, r in definitions:
        kind = r["resourceType"]
        if kind == "StructureDefinition" and r.get("type") == "Extension":
            kind = "Extension"
        grouped.setdefault(kind, []).append((path, r))
    titles = {**_KINDS, "StructureDefinition": "Profiles", "Extension": "Extensions"}
    order = ["StructureDefinition", "Extension", *[k for k in _KINDS if k != "StructureDefinition"]]
    for kind in order + sorted(set(grouped) - set(order)):
        items = grouped.get(kind)
        if not items:
            continue
        lines += [f"## {titles.get(kind, kind)} ({len(items)})", ""]
        if kind == "StructureDefinition":
            lines += ["| Id | Type | Title | Examples |", "|---|---|---|---|"]
            for path, r in items:
                shown = ", ".join(by_profile.get(r["url"], [])) or "—"
                lines.append(
                    f"| [{r['id']}](../{path.relative_to(ROOT)}) | {r['type']} | {_cell(r.get('title'))} | {shown} |"
                )
        elif kind in ("CodeSystem", "ValueSet", "ConceptMap"):
            lines += ["| Id | Url | Title | Content |", "|---|---|---|---|"]
            for path, r in items:
                title = _cell(r.get("title") or r.get("name"))
                lines.append(f"| {_link(path, r)} | `{r.get('url', '')}` | {title} | {_content(r)} |")
        else:
            lines += ["| Id | Url | Title |", "|---|---|---|"]
            for path, r in items:
                lines.append(f"| {_link(path, r)} | `{r.get('url', '')}` | {_cell(r.get('title') or r.get('name'))} |")
        lines.append("")
    lines += _routed_operations()
    lines += ["## Rules (`ImplementationGuide.global`)", ""]
    if rules:
        lines += ["| Type | Profile | Applies when (FHIRPath) |", "|---|---|---|"]
        for g in rules:
            lines.append(f"| {g['type']} | `{g['profile']}` | `{g['extension'][0]['valueString']}` |")
    else:
        lines.append("None: profiles are enforced for the resources that claim them in `meta.profile`.")
    lines.append("")
    return "\n".join(lines)


def _link(path: pathlib.Path, r: dict[str, Any]) -> str:
    return f"[{r['id']}](../{path.relative_to(ROOT)})"


def _routed_operations() -> list[str]:
    """Every operation the server routes, with its URLs and definition (rest/routes.py)."""
    sys.path.insert(0, str(ROOT))
    from fhir_server.rest.interactions.capabilities import operation_definition
    from fhir_server.rest.routes import ROUTES

    urls: dict[tuple[str, str], list[str]] = {}
    for route in ROUTES:
        if route.interaction.startswith("$"):
            res_type = route.pattern[0] if route.pattern and not route.pattern[0].startswith("{") else ""
            if res_type.startswith("$"):
                res_type = ""
            definition = operation_definition(route.interaction[1:], res_type or None)
            path = "/".join(route.pattern)
            urls.setdefault((route.interaction, definition), []).append(f"`{route.method} [base]/{path}`")
    lines = ["## Operations the server answers", "", "| Operation | Requests | Definition |", "|---|---|---|"]
    for name, definition in sorted(urls):
        lines.append(f"| `{name}` | {'<br>'.join(urls[name, definition])} | `{definition}` |")
    return [*lines, ""]


def _cell(text: Any) -> str:
    return str(text or "").replace("|", "\\|").replace("\n", " ")


def _content(r: dict[str, Any]) -> str:
    if r["resourceType"] == "CodeSystem":
        return f"{r.get('content', '')}, {_count(r.get('concept', []))} concepts"
    if r["resourceType"] == "ConceptMap":
        return f"{sum(len(e.get('target', [])) for g in r.get('group', []) for e in g.get('element', []))} mappings"
    return ", ".join(
        sorted(
            {
                i.get("system", i.get("valueSet", [""])[0] if i.get("valueSet") else "")
                for i in (r.get("compose") or {}).get("include", [])
            }
        )
    )


def _count(concepts: list[dict[str, Any]]) -> int:
    return sum(1 + _count(c.get("concept", [])) for c in concepts)


def render() -> tuple[str, str]:
    guide, page = build()
    return json.dumps(guide, ensure_ascii=False, indent=2) + "\n", page


def main() -> int:
    guide, page = render()
    GUIDE.write_text(guide)
    PAGE.write_text(page)
    print(f"wrote {GUIDE.relative_to(ROOT)} and {PAGE.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
