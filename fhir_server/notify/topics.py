"""The subscription topics of the platform (R19: consultation notices, opinions, reports).

Why topics as well as R4 criteria: a criteria Subscription (``Task?owner=…``) is told of every
change to a matching resource, a note or a typo included; a topic says which changes are events
— a consultation's step, an opinion submitted, a report published — so a subscriber gets the
events of the workflow and nothing else (the R5 model, used in R4 through the Subscriptions
Backport IG: ``Subscription.criteria`` is the topic's canonical URL, narrowed by
``backport-filter-criteria``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fhir_server.workflow import machine as m

CN = "http://fhir.telefhir.cn"
#: (resource as stored before the change or None, resource after) → is this an event of the topic
Trigger = Callable[[dict[str, Any] | None, dict[str, Any]], bool]


@dataclass(frozen=True)
class Topic:
    url: str
    title: str
    description: str
    resource_type: str
    trigger: Trigger


def _task_step(before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    status = m.business_status(after)
    return status is not None and status != m.business_status(before)


def _is_opinion(resource: dict[str, Any] | None) -> bool:
    return any(
        isinstance(coding, dict) and coding.get("system") == m.SERVICE_TYPES
        for concept in (resource or {}).get("category") or ()
        if isinstance(concept, dict)
        for coding in concept.get("coding") or ()
    )


def _opinion_submitted(before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    return _is_opinion(after) and (before is None or before.get("status") != after.get("status"))


def _report_published(before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    related = (after.get("context") or {}).get("related") or ()
    of_report = any(str((r or {}).get("reference", "")).startswith("Composition/") for r in related)
    return of_report and after.get("status") == "current" and (before is None or before.get("status") != "current")


TOPICS: dict[str, Topic] = {
    t.url: t
    for t in (
        Topic(
            f"{CN}/SubscriptionTopic/consultation",
            "会诊进程 A consultation's step",
            "A Task of a consultation, diagnosis request or referral is created or changes its businessStatus "
            "(docs/workflows.md): filter with Task search parameters (owner, requester, patient, code …).",
            "Task",
            _task_step,
        ),
        Topic(
            f"{CN}/SubscriptionTopic/opinion",
            "专家意见 An expert's opinion",
            "An expert's opinion (an Observation in a telemedicine service category) is recorded or changes "
            "status: filter with Observation search parameters (based-on, patient …).",
            "Observation",
            _opinion_submitted,
        ),
        Topic(
            f"{CN}/SubscriptionTopic/report",
            "会诊报告发布 A report published",
            "A consultation report is published (its DocumentReference becomes current): filter with "
            "DocumentReference search parameters (related, patient, custodian …).",
            "DocumentReference",
            _report_published,
        ),
    )
}
