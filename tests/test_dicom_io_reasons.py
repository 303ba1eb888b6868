"""dicom_io.reasons: every reason code the listener, the checks and the worker make has its words on the worklist and
its meaning in the structured report."""

from __future__ import annotations


def test_every_reason_code_has_its_words_on_the_worklist() -> None:
    """The codes are made in dicom_io and the worker; the page, API and CLI show them with words from one table."""
    from dicom_io.reasons import Reason
    from worklist.presentation import REASON_TEXT

    assert {code.value for code in Reason} - set(REASON_TEXT) == set()
    assert set(REASON_TEXT) - {code.value for code in Reason} == set()  # no words for a code nobody makes


def test_every_reason_code_has_its_meaning_in_the_structured_report() -> None:
    from dicom_io.reasons import Reason
    from dicom_io.report_sr import REASON_MEANINGS

    assert set(Reason) == set(REASON_MEANINGS)
