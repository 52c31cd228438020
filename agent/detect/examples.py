"""Every signature carries examples (lines it must match, with the subject it must give)
and counter-examples (lines it must not match): the loader checks them, so a signature
that does not do what its examples say is refused with file, id and reason, like any
other configuration error; `nodewarden check` runs them too."""

from __future__ import annotations

from agent.detect.signature import Catalog, Signature, config_key, message_of
from agent.schema import ConfigError


def signature_example_errors(sig: Signature) -> list[ConfigError]:
    """What is wrong with one signature's examples and counter-examples."""
    errors: list[ConfigError] = []
    for i, ex in enumerate(sig.examples):
        got = sig.extract(ex.line)
        if got is None:
            program, message = message_of(sig.source, ex.line)
            seen = "" if program is None else f" (program {program!r}, message " \
                                              f"{message[:60]!r})"
            errors.append(ConfigError(sig.file, config_key(sig.id, f"examples[{i}]"),
                                      f"does not match: {ex.line!r}"[:240] + seen))
        elif got != ex.subject:
            errors.append(ConfigError(
                sig.file, config_key(sig.id, f"examples[{i}]"),
                f"gives subject {got!r}, expected {ex.subject!r}"[:300]))
    for i, line in enumerate(sig.counter_examples):
        if sig.match_line(line) is not None:
            errors.append(ConfigError(sig.file, config_key(sig.id, f"counter_examples[{i}]"),
                                      f"matches, but must not: {line!r}"[:300]))
    return errors


def check_examples(catalog: Catalog) -> list[ConfigError]:
    """Every example must match and give its subject; no counter-example may match."""
    errors: list[ConfigError] = []
    for sig in catalog.signatures:
        errors.extend(signature_example_errors(sig))
    return errors
