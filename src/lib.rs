//! hookgate: a declarative webhook gateway.
//!
//! Two paths share one immutable value, the [`ruleset::RuleSet`]:
//!
//! ```text
//! rules file ─ load ─▶ syntax::parse ─▶ Ast ─ compile ─▶ RuleSet ─ reload::RuleStore (ArcSwap) ─┐
//!                                                                                               │
//! HTTP request ─ server (route, span, credential precheck, body budget) ──────────────────────┐ │
//!   └▶ handler: rate ▶ verify ▶ prepare ▶ decide (eval + jobs) ▶ queue.accept ─▶ 202 ◀─────────┘─┘
//!                                                      │
//!                        delivery_log (every request)  ▼
//!                                         dispatch: claim ▶ HTTP ▶ settle (done | retry | dead)
//! ```
//!
//! The modules below are listed in that reading order: the rules language, the compiled set, the
//! request pipeline, the queue and delivery, the server, the command line. `docs/architecture.md` has
//! the code map and the invariants:
//! - Only `syntax` knows about pest.
//! - `syntax`, `compile`, `ruleset`, `providers`, `verify`, `prepare`, `eval` do no IO.
//! - A `RuleSet` is immutable, owned and `Send + Sync`; it holds no spans.
//! - Every rules-file problem is a [`diagnostic::Diagnostic`] with a span and a stable code.
//! - 202 means the jobs (and the delivery's record) are durably stored.

// The rules language: text → diagnostics or a compiled set.
pub mod source;
pub mod diagnostic;
mod fs;
pub mod load;
mod syntax;
pub mod providers;
pub mod compile;
pub mod ruleset;
pub mod rule_test;

// One request: verify → prepare → evaluate.
pub mod signature;
pub mod verify;
pub mod extract;
pub mod prepare;
pub mod event;
pub mod eval;
pub mod explain;

// What becomes of it: the delivery log, the queue, delivery.
pub mod clock;
pub mod pairs;
pub mod delivery_log;
pub mod queue;
pub mod dispatch;

// The running gateway and its command line.
pub mod reload;
pub mod secrets;
pub mod metrics;
pub mod server;
pub mod memory;
pub mod cli;
