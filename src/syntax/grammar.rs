//! The pest parser generated from `grammar/rules.pest`.

// pest_derive generates the `Rule` enum with one variant per grammar rule, named as in the grammar.
#[derive(pest_derive::Parser)]
#[grammar = "grammar/rules.pest"]
pub(crate) struct Grammar;
