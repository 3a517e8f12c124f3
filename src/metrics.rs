//! Prometheus metrics: one registry for the process, rendered as text on the admin port's `/metrics`.
//!
//! Labels are bounded by the rules file (sources, rules, targets) and by small fixed sets (status codes,
//! failure reasons, outcomes); nothing from a request body or URL becomes a label.

use std::sync::LazyLock;

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    verification_failures: IntCounterVec,
    rule_matches: IntCounterVec,
    actions_enqueued: IntCounterVec,
    deliveries: IntCounterVec,
    delivery_seconds: HistogramVec,
    request_seconds: HistogramVec,
    queue_jobs: IntGaugeVec,
    reloads: IntCounterVec,
    config_info: IntGaugeVec,
    config_generation: IntGauge,
    records_not_stored: prometheus::IntCounter,
    body_bytes_in_flight: IntGauge,
    target_jobs: IntGaugeVec,
    target_oldest_pending: prometheus::GaugeVec,
    target_last_delivery: prometheus::GaugeVec,
}

/// `made`, registered in `registry`. Every metric here has a valid name and is registered once, so
/// neither step can fail.
fn registered<M: Collector + Clone + 'static>(
    registry: &Registry,
    made: prometheus::Result<M>,
) -> M {
    let metric = made.unwrap_or_else(|e| unreachable!("valid metric: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| unreachable!("registered once: {e}"));
    metric
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let counter = |name: &str, help: &str, labels: &[&str]| {
        registered(&registry, IntCounterVec::new(Opts::new(name, help), labels))
    };
    let histogram = |name: &str, help: &str, labels: &[&str]| {
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let opts = HistogramOpts::new(name, help).buckets(buckets);
        registered(&registry, HistogramVec::new(opts, labels))
    };
    let requests = counter(
        "hookgate_requests_total",
        "Webhook requests answered, by source and status code.",
        &["source", "status"],
    );
    let verification_failures = counter(
        "hookgate_verification_failures_total",
        "Requests rejected by signature or token verification, by source and reason.",
        &["source", "reason"],
    );
    let rule_matches = counter(
        "hookgate_rule_matches_total",
        "Deliveries a rule matched.",
        &["rule"],
    );
    let actions_enqueued = counter(
        "hookgate_actions_enqueued_total",
        "Actions durably enqueued, by kind.",
        &["kind"],
    );
    let deliveries = counter(
        "hookgate_deliveries_total",
        "Delivery attempts, by target and outcome.",
        &["target", "outcome"],
    );
    let delivery_seconds = histogram(
        "hookgate_delivery_duration_seconds",
        "Duration of delivery attempts.",
        &["target"],
    );
    let request_seconds = histogram(
        "hookgate_request_duration_seconds",
        "Time to answer webhook requests.",
        &["source"],
    );
    let queue_jobs = registered(
        &registry,
        IntGaugeVec::new(
            Opts::new("hookgate_queue_jobs", "Jobs in the queue, by state."),
            &["state"],
        ),
    );
    let reloads = counter(
        "hookgate_reloads_total",
        "Rules reloads, by result (success, failure, unchanged).",
        &["result"],
    );
    let config_info = registered(
        &registry,
        IntGaugeVec::new(
            Opts::new(
                "hookgate_config_info",
                "The hash of the rules now serving (value 1).",
            ),
            &["hash"],
        ),
    );
    let config_generation = registered(
        &registry,
        IntGauge::new(
            "hookgate_config_generation",
            "Successful rules loads since start.",
        ),
    );
    let records_not_stored = registered(
        &registry,
        prometheus::IntCounter::new(
            "hookgate_delivery_records_not_stored_total",
            "Delivery records kept only in memory because the store fell behind.",
        ),
    );
    let body_bytes_in_flight = registered(
        &registry,
        IntGauge::new(
            "hookgate_body_bytes_in_flight",
            "Bytes of request bodies being read, held against --max-body-in-flight, read at scrape.",
        ),
    );
    let target_jobs = registered(
        &registry,
        IntGaugeVec::new(
            Opts::new(
                "hookgate_target_jobs",
                "Jobs of a target, by state, read at scrape.",
            ),
            &["target", "state"],
        ),
    );
    let gauge = |name: &str, help: &str| {
        registered(
            &registry,
            prometheus::GaugeVec::new(Opts::new(name, help), &["target"]),
        )
    };
    let target_oldest_pending = gauge(
        "hookgate_target_oldest_pending_age_seconds",
        "Age of a target's oldest pending job (0 when none), read at scrape.",
    );
    let target_last_delivery = gauge(
        "hookgate_target_last_delivery_timestamp_seconds",
        "When a delivery last reached the target (2xx), Unix seconds.",
    );
    Metrics {
        registry,
        records_not_stored,
        body_bytes_in_flight,
        target_jobs,
        target_oldest_pending,
        target_last_delivery,
        requests,
        verification_failures,
        rule_matches,
        actions_enqueued,
        deliveries,
        delivery_seconds,
        request_seconds,
        queue_jobs,
        reloads,
        config_info,
        config_generation,
    }
});

pub(crate) fn request(source: &str, status: u16, seconds: f64) {
    METRICS
        .requests
        .with_label_values(&[source, &status.to_string()])
        .inc();
    METRICS
        .request_seconds
        .with_label_values(&[source])
        .observe(seconds);
}

pub(crate) fn verification_failure(source: &str, reason: &str) {
    METRICS
        .verification_failures
        .with_label_values(&[source, reason])
        .inc();
}

pub(crate) fn rule_matched(rule: &str) {
    METRICS.rule_matches.with_label_values(&[rule]).inc();
}

pub(crate) fn enqueued(kind: &str) {
    METRICS.actions_enqueued.with_label_values(&[kind]).inc();
}

pub(crate) fn delivery(target: &str, outcome: &str, seconds: f64) {
    METRICS
        .deliveries
        .with_label_values(&[target, outcome])
        .inc();
    METRICS
        .delivery_seconds
        .with_label_values(&[target])
        .observe(seconds);
}

pub(crate) fn queue(stats: &crate::queue::Stats) {
    for (state, n) in [
        ("pending", stats.pending),
        ("inflight", stats.inflight),
        ("done", stats.done),
        ("dead", stats.dead),
    ] {
        METRICS.queue_jobs.with_label_values(&[state]).set(n as i64);
    }
}

pub(crate) fn body_bytes_in_flight(bytes: u64) {
    METRICS
        .body_bytes_in_flight
        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
}

pub(crate) fn records_not_stored() {
    METRICS.records_not_stored.inc();
}

/// Per-target gauges, read at scrape.
pub(crate) fn targets(stats: &[crate::delivery_log::TargetStats], now_ms: i64) {
    METRICS.target_jobs.reset();
    METRICS.target_oldest_pending.reset();
    METRICS.target_last_delivery.reset();
    for t in stats {
        let name = t.name.as_str();
        METRICS
            .target_jobs
            .with_label_values(&[name, "pending"])
            .set(t.pending as i64);
        METRICS
            .target_jobs
            .with_label_values(&[name, "inflight"])
            .set(t.inflight as i64);
        METRICS
            .target_oldest_pending
            .with_label_values(&[name])
            .set(
                t.oldest_pending_at
                    .map_or(0.0, |at| (now_ms - at).max(0) as f64 / 1000.0),
            );
        if let Some(at) = t.last_delivery_at {
            METRICS
                .target_last_delivery
                .with_label_values(&[name])
                .set(at as f64 / 1000.0);
        }
    }
}

pub(crate) fn reload(result: &str) {
    METRICS.reloads.with_label_values(&[result]).inc();
}

pub(crate) fn config_loaded(hash: &str, generation: u64) {
    METRICS.config_info.reset();
    METRICS.config_info.with_label_values(&[hash]).set(1);
    METRICS.config_generation.set(generation as i64);
}

/// The registry in Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    // Encoding gathered metrics into memory cannot fail.
    let _ = TextEncoder::new().encode(&METRICS.registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}
