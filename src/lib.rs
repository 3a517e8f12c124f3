//! hookgate: a declarative webhook gateway.
//!
//! ```text
//! rules file ──load──▶ SourceText ──syntax::parse──▶ Ast ──compile──▶ RuleSet (+ warnings | Diagnostics)
//! ```
//!
//! A rules file is read by [`load`] (the IO edge: files, includes, content hash), parsed by `syntax`
//! (the only module that knows pest), and compiled by [`compile`] into an immutable [`ruleset::RuleSet`]:
//! every name resolved, every regex and JSONPath compiled, every secret loaded through the
//! [`compile::Secrets`] trait. `gateway check` and the server load through the same path, so a file
//! that checks clean is a file that loads.
//!
//! Invariants (see `docs/architecture.md`):
//! - Only `syntax` knows about pest.
//! - `syntax`, `compile`, `ruleset` and `providers` do no IO.
//! - A `RuleSet` is immutable, owned and `Send + Sync`; it holds no spans.
//! - Every rules-file problem is a [`diagnostic::Diagnostic`] with a span and a stable code.

pub mod cli;
pub mod compile;
pub mod delivery_log;
pub mod diagnostic;
pub mod dispatch;
pub mod eval;
pub mod event;
pub mod explain;
pub mod extract;
pub mod load;
pub mod metrics;
pub mod prepare;
pub mod providers;
pub mod queue;
pub mod reload;
pub mod rule_test;
pub mod ruleset;
pub mod secrets;
pub mod server;
pub mod signature;
pub mod source;
mod syntax;
pub mod verify;
