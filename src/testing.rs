//! Moved to [`crate::rule_test`] (`run`, `event`, `payload`, `headers`, `TestResult`); these
//! re-exports keep the old paths working until their callers use the new one.

pub use crate::rule_test::{TestResult, event, headers, payload, run};
