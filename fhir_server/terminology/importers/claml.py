"""WHO ICD-10 in ClaML (the XML the WHO distributes: ``<ClaML>``, ``<Class code kind>``,
``<SuperClass>``, ``<Rubric kind="preferred"><Label>``) as the CodeSystem http://hl7.org/fhir/sid/icd-10.

Read with ``iterparse``: each ``Class`` is turned into a concept when its end tag is read and
then cleared, so memory holds the concepts built, not the document tree. Per class: ``code``;
display = the ``preferred`` rubric's label (its text, references included, whitespace
collapsed); definition = a ``definition`` rubric if any; ``inclusion`` and ``preferredLong``
rubrics become designations (without ``use``: R4 names no use code for a rubric kind); ``kind``
(chapter, block, category) and ``usage`` (dagger/asterisk) become properties; ``SuperClass``
becomes the ``parent`` property. The version is the ``Title`` element's ``version`` attribute
unless ``--version`` is given.
Modifier classes (``ModifierClass``, the shared fourth/fifth character subdivisions some
chapters use) are not expanded into codes.
"""

from __future__ import annotations

import pathlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

from fhir_server.errors import FhirError

URL = "http://hl7.org/fhir/sid/icd-10"
PARENT_URI = "http://hl7.org/fhir/concept-properties#parent"


def _label(rubric: ET.Element) -> str:
    label = rubric.find("Label")
    if label is None:
        return ""
    return " ".join("".join(label.itertext()).split())


def _language(rubric: ET.Element) -> str | None:
    label = rubric.find("Label")
    if label is None:
        return None
    return label.get("{http://www.w3.org/XML/1998/namespace}lang")


def read(path: pathlib.Path, options: Any) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    header: dict[str, Any] = {
        "id": "icd-10",
        "url": URL,
        "name": "ICD10",
        "title": "ICD-10",
        "publisher": "World Health Organization",
        "hierarchyMeaning": "classified-with",
        "property": [
            {"code": "parent", "uri": PARENT_URI, "type": "code"},
            {"code": "kind", "type": "code", "description": "ClaML class kind: chapter, block or category"},
            {"code": "usage", "type": "code", "description": "dagger or aster (asterisk) usage"},
        ],
    }
    events = ET.iterparse(str(path), events=("start", "end"))
    try:
        _, root = next(events)
    except ET.ParseError as exc:
        raise FhirError("invalid", f"{path.name} is not XML: {exc}") from None
    if root.tag != "ClaML":
        raise FhirError("invalid", f"{path.name} is not a ClaML file (root element {root.tag})")

    def concepts() -> Iterator[dict[str, Any]]:
        try:
            for event, element in events:
                if event != "end":
                    continue
                if element.tag == "Title":
                    if element.get("version"):
                        header.setdefault("version", element.get("version"))
                    if element.get("name"):
                        header["title"] = element.get("name")
                    if element.get("date"):
                        header.setdefault("date", element.get("date"))
                elif element.tag == "Class":
                    concept = _concept(element)
                    root.clear()  # the class is read: drop it (and anything before it) from the tree
                    if concept is not None:
                        yield concept
        except ET.ParseError as exc:
            raise FhirError("invalid", f"{path.name}: {exc}") from None

    return header, concepts()


def _concept(element: ET.Element) -> dict[str, Any] | None:
    code = element.get("code")
    if not code:
        return None
    concept: dict[str, Any] = {"code": code}
    designations = []
    for rubric in element.findall("Rubric"):
        kind = rubric.get("kind")
        text = _label(rubric)
        if not text:
            continue
        if kind == "preferred" and "display" not in concept:
            concept["display"] = text
        elif kind == "definition" and "definition" not in concept:
            concept["definition"] = text
        elif kind in ("inclusion", "preferredLong"):
            designation: dict[str, Any] = {"value": text}
            language = _language(rubric)
            if language:
                designation = {"language": language, **designation}
            designations.append(designation)
    if designations:
        concept["designation"] = designations
    props = []
    if element.get("kind"):
        props.append({"code": "kind", "valueCode": element.get("kind")})
    if element.get("usage"):
        props.append({"code": "usage", "valueCode": element.get("usage")})
    props += [{"code": "parent", "valueCode": s.get("code")} for s in element.findall("SuperClass") if s.get("code")]
    if props:
        concept["property"] = props
    return concept
