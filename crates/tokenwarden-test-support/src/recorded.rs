//! What a `metrics` debugging recorder holds, in a form tests can compare.

use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// Every metric `recorder` holds, as `name{label=value,…}` (labels sorted) and its value,
/// sorted by name.
#[must_use]
pub fn recorded(recorder: &DebuggingRecorder) -> Vec<(String, DebugValue)> {
    let mut all: Vec<_> = recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<_> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            (format!("{}{{{}}}", key.name(), labels.join(",")), value)
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}
