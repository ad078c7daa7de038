"""Four-eyes on SageMaker identities: did the principal that created a model package approve it?

SageMaker records who created a model package (``CreatedBy``) and who last
changed it (``LastModifiedBy``, the approver after ``UpdateModelPackage``) as
a ``UserContext``: a Studio user profile (``UserProfileArn``,
``UserProfileName``, ``DomainId``) and/or an IAM identity (``IamIdentity``:
``Arn``, ``PrincipalId``, ``SourceIdentity``). The local registry describes
packages in the same shape (``UserProfileName`` is the OS account).

Two contexts are the same principal when a person-level identity they both
carry matches: the ``SourceIdentity`` the identity provider set (it survives
role chaining and cannot be changed by the caller) or the Studio user profile.
Only when neither is on both sides are the IAM identities compared (principal
id, or the ARN reduced to account, user or role name and session). Every name
is compared by :func:`pipelines.core.identity.identity_key`. When nothing
comparable is recorded, the answer is "unknown", which the callers treat as a
refusal: an approval nobody can attribute never deploys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.core.identity import identity_key, same_identity

UserContext = Mapping[str, Any]


def _profile(context: UserContext) -> tuple[str, str] | None:
    """(domain key or "", profile name key) from the name, else from the profile ARN."""
    name, domain = context.get("UserProfileName"), context.get("DomainId")
    arn = str(context.get("UserProfileArn") or "")
    if not name and ":user-profile/" in arn:  # arn:...:user-profile/DOMAIN/NAME
        domain, _, name = arn.split(":user-profile/", 1)[1].partition("/")
    if not name or not identity_key(str(name)):
        return None
    return identity_key(str(domain or "")), identity_key(str(name))


def _same_profile(first: tuple[str, str], second: tuple[str, str]) -> bool:
    (domain_a, name_a), (domain_b, name_b) = first, second
    return name_a == name_b and (not domain_a or not domain_b or domain_a == domain_b)


def _iam_parts(arn: str) -> tuple[str, str, str, str] | None:
    """(account, kind, name, session) of a user, role or assumed-role ARN; paths dropped."""
    fields = arn.split(":", 5)
    if len(fields) != 6 or fields[0] != "arn":
        return None
    account, resource = fields[4], fields[5]
    kind, _, rest = resource.partition("/")
    parts = rest.split("/")
    if kind == "assumed-role" and len(parts) >= 2:
        return identity_key(account), "role", identity_key(parts[0]), identity_key(parts[1])
    if kind in ("user", "role") and parts[-1]:
        return identity_key(account), kind, identity_key(parts[-1]), ""
    return identity_key(account), identity_key(kind), identity_key(rest), ""


def _same_iam(first: Mapping[str, Any], second: Mapping[str, Any]) -> bool | None:
    ids = [identity_key(str(c.get("PrincipalId") or "")) for c in (first, second)]
    if all(ids) and ids[0] == ids[1]:
        return True
    arns = [_iam_parts(str(c.get("Arn") or "")) for c in (first, second)]
    if arns[0] is None or arns[1] is None:
        return False if all(ids) else None
    (account_a, kind_a, name_a, session_a), (account_b, kind_b, name_b, session_b) = arns
    # A role named without a session (the role itself) matches every session of it.
    sessions_match = not session_a or not session_b or session_a == session_b
    return account_a == account_b and kind_a == kind_b and name_a == name_b and sessions_match


def same_principal(first: UserContext | None, second: UserContext | None) -> bool | None:
    """True/False if the two contexts are/are not one principal; None if nothing compares."""
    if not first or not second:
        return None
    iam_a, iam_b = first.get("IamIdentity") or {}, second.get("IamIdentity") or {}
    source_a, source_b = iam_a.get("SourceIdentity"), iam_b.get("SourceIdentity")
    profile_a, profile_b = _profile(first), _profile(second)
    strong: list[bool] = []
    if source_a and source_b:
        strong.append(same_identity(str(source_a), str(source_b)))
    if profile_a and profile_b:
        strong.append(_same_profile(profile_a, profile_b))
    if strong:
        return any(strong)
    if iam_a and iam_b:
        return _same_iam(iam_a, iam_b)
    return None


def describe_principal(context: UserContext | None) -> str:
    """A short human name for a context (for messages and notifications)."""
    if not context:
        return "an unrecorded identity"
    iam = context.get("IamIdentity") or {}
    for value in (
        context.get("UserProfileName"),
        iam.get("SourceIdentity"),
        iam.get("Arn"),
        context.get("UserProfileArn"),
        iam.get("PrincipalId"),
    ):
        if value:
            return str(value)
    return "an unrecorded identity"


def self_approval(package: Mapping[str, Any], event: Mapping[str, Any] | None = None) -> str | None:
    """Why an Approved package must not deploy under four-eyes, or None if it may.

    ``package`` is a DescribeModelPackage response read when the event arrived;
    the approver is its ``LastModifiedBy``, and also the ``LastModifiedBy`` the
    state-change event carried (if any), since the package may have changed
    since. Refused when any approver is the creator, or when either identity
    is missing or not comparable.
    """
    creator = package.get("CreatedBy")
    detail = (event or {}).get("detail") or {}
    approvers = [c for c in (package.get("LastModifiedBy"), detail.get("LastModifiedBy")) if c]
    arn = package.get("ModelPackageArn", "the model package")
    if not creator or not approvers:
        missing = "creator" if not creator else "approver"
        return f"{arn} records no {missing} identity, so four-eyes cannot be established"
    for approver in approvers:
        verdict = same_principal(creator, approver)
        if verdict is None:
            return (
                f"{arn}: the approver ({describe_principal(approver)}) and the creator "
                f"({describe_principal(creator)}) carry no identity that can be compared, "
                "so four-eyes cannot be established"
            )
        if verdict:
            return (
                f"{arn} was approved by the principal that created it "
                f"({describe_principal(creator)}); four-eyes requires a different approver"
            )
    return None
