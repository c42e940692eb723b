//! `kiln check` end to end: data-driven lint cases (`tests/cases/check/`), filled in with the lints.
