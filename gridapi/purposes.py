"""Why full personal values are read: the purpose codes the audit log keeps.

An unmasked read (`GET /persons/{id}/sensitive`), an access export (`GET /persons/{id}/export`)
and an unmasked export of residents state a `purpose_code` from :data:`PURPOSES` and, optionally,
a `reference` (the case, file or request number). The audit log is append-only and outlives an
erased record, so it keeps those and never free text: a free-text `purpose` (deprecated, the
only parameter once) is still accepted but not kept. One that is a code is that code; any other
text is ``other``, with only the fact that a text was given.

Pure functions, no I/O.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from .personal import InvalidValue, parse_first_generation_id_number, parse_id_number

#: The lawful purposes of reading a resident's full values (PIPL art. 13; DOMAIN.md §7).
PURPOSES = (
    "case_handling",  # 事件办理: handling a case or task about the resident
    "identity_verification",  # 身份核实: checking who applies (低保, subsidies, registration)
    "public_service",  # 公共服务: services and benefits the resident is owed
    "subject_access",  # 本人查询: the resident's own access request (PIPL art. 45)
    "legal_request",  # 依法调取: a court, procuratorate or police request under the law
    "emergency",  # 应急处置: a public-health or safety emergency (PIPL art. 13(4))
    "statistics",  # 统计核对: checking statistics against the register
    "audit",  # 审计检查: an audit or supervision of the register's use
    "other",
)

#: What the audit log keeps in place of a free-text purpose.
GIVEN = "(given)"

_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9/_.\-]{0,39}")
_SEPARATORS = re.compile(r"[\s/_.\-]")


def reference_problem(value: str) -> str | None:
    """Return why ``value`` cannot be a reference number, or None: a reference is the
    office's case, file or ticket number, never a resident's ID or phone number."""
    if not _REFERENCE.fullmatch(value):
        return "1-40 letters, digits, '/', '_', '.' or '-' (a case, file or ticket number)"
    bare = value.upper()
    refused = "must not be or hold an ID or phone number: the audit log keeps it for good"
    # Eleven digits or more in a row are no office's number written so (a case number has
    # its dashes): a phone or ID number, bare or inside a longer text (TEL13812345678,
    # 8613812345678, ID110105194912310021). Only a whole number was refused.
    if re.search(r"[0-9]{11,}", bare):
        return refused
    # A phone number is written with separators as often as without (138-1234-5678), also
    # inside a longer text (TEL-138-1234-5678); an ID number so written inside one
    # (ID-110105-19491231-0021), as the whole reference, may be a case number
    # (``is_id_number_written_apart``).
    digits = _SEPARATORS.sub("", bare)
    for run in re.findall(r"[0-9]+X?", digits):
        if re.fullmatch(r"1[3-9][0-9]{9}", run):
            return refused
        if run != digits and _parses_as_id_number(run):
            return refused
    return None


def _parses_as_id_number(digits: str) -> bool:
    """Return whether ``digits`` is a valid ID number, or a plausible first-generation one."""
    for parse in (parse_id_number, parse_first_generation_id_number):
        try:
            parse(digits)
        except InvalidValue:
            continue
        return True
    return False


def is_id_number_written_apart(value: str, today: date | None = None) -> bool:
    """Return whether ``value`` is a resident's ID number written with separators
    (``110105-19491231-002X``, ``110105 19491231 002X``): a valid one (region, a birth
    date neither in the future nor before 1890, check digit) once they are dropped. A
    first-generation 15-digit number (``110105-491231-002``, still on old paper records)
    is one too when its region and birth date are plausible (it has no check digit).

    :func:`reference_problem` cannot refuse it: a case number
    (``<county code>-<YYYYMMDD>-<NNNN>``) has the same shape, and one in eleven carries a
    valid check digit by chance. Only a look-up of the cases tells them apart
    (``services.register.check_reference``)."""
    bare = _SEPARATORS.sub("", value)
    if bare == value.strip():
        return False  # no separators: reference_problem refuses an ID number as such
    for parse in (parse_id_number, parse_first_generation_id_number):
        try:
            parse(bare, today)
        except InvalidValue:
            continue
        return True
    return False


def coded_summary(
    args: dict[str, Any], code_key: str, text_key: str, codes: tuple[str, ...]
) -> dict[str, Any]:
    """Return what the audit log keeps of a coded statement (``code_key``, ``reference``,
    deprecated free text ``text_key``): the code and reference, never free text. A text
    that is one of ``codes`` is that code; any other is ``other``, with only the fact that
    a text was given. Used for purposes and for erasures' reasons."""
    code = args.get(code_key)
    text = args.get(text_key)
    if code is None:
        code = text if text in codes else "other"
    summary: dict[str, Any] = {code_key: code}
    if args.get("reference"):
        summary["reference"] = args["reference"]
    if text is not None and text not in codes:
        summary[text_key] = GIVEN
    return summary


def purpose_summary(args: dict[str, Any]) -> dict[str, Any]:
    """Return what the audit log keeps of a stated purpose (``purpose_code``, ``reference``,
    deprecated ``purpose``): ``coded_summary``. An empty dict when no purpose was stated (a
    masked export)."""
    if args.get("purpose_code") is None and args.get("purpose") is None:
        return {}
    return coded_summary(args, "purpose_code", "purpose", PURPOSES)


def stored_purpose(args: dict[str, Any]) -> str | None:
    """Return the purpose as an export job keeps it until its file is fetched (the job's
    ``purpose`` column): ``code`` or ``code reference``, never the free text."""
    summary = purpose_summary(args)
    if not summary:
        return None
    if "reference" in summary:
        return f"{summary['purpose_code']} {summary['reference']}"
    return str(summary["purpose_code"])


def summary_of_stored(stored: str | None) -> dict[str, Any]:
    """Return the audit summary of a job's stored purpose (:func:`stored_purpose`); a job
    queued before purposes were codes held free text, which stays out of the log. A
    reference that is an ID number written with separators (a job queued before those were
    refused) is not copied into the download's row either: ``(given)`` stands for it (the
    job's own row still names a case number of that shape)."""
    if not stored:
        return {}
    code, _, reference = stored.partition(" ")
    if code in PURPOSES and (not reference or reference_problem(reference) is None):
        if reference and is_id_number_written_apart(reference):
            return {"purpose_code": code, "reference": GIVEN}
        return {"purpose_code": code, **({"reference": reference} if reference else {})}
    return {"purpose_code": "other", "purpose": GIVEN}
