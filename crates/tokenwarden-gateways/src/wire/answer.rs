//! Reading an issuer's JSON answer with errors that say what is wrong where, and an error
//! answer as the gateway error it stands for (RFC 6749 §5.2 codes included).

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use crate::GatewayError;

/// A JSON answer being read, with errors that say what is wrong where.
pub(crate) struct Answer {
    pub(crate) gateway: &'static str,
    pub(crate) status: StatusCode,
    pub(crate) json: Value,
}

impl Answer {
    /// Parses the body as a JSON object.
    pub(crate) fn parse(
        gateway: &'static str,
        status: StatusCode,
        body: &[u8],
    ) -> Result<Self, GatewayError> {
        let malformed = |problem: String| GatewayError::Malformed {
            gateway,
            status,
            problem,
        };
        match serde_json::from_slice::<Value>(body) {
            Ok(json @ Value::Object(_)) => Ok(Self {
                gateway,
                status,
                json,
            }),
            Ok(other) => Err(malformed(format!(
                "expected a JSON object, got {}",
                kind(&other)
            ))),
            Err(e) => Err(malformed(format!("not JSON ({e})"))),
        }
    }

    pub(crate) fn malformed(&self, problem: impl Into<String>) -> GatewayError {
        GatewayError::Malformed {
            gateway: self.gateway,
            status: self.status,
            problem: problem.into(),
        }
    }

    pub(crate) fn get(&self, pointer: &str) -> Option<&Value> {
        self.json.pointer(pointer).filter(|v| !v.is_null())
    }

    /// A non-empty string at `pointer`.
    pub(crate) fn string(&self, pointer: &str) -> Result<&str, GatewayError> {
        match self.get(pointer) {
            None => Err(self.malformed(format!("`{pointer}` is missing"))),
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(self.malformed(format!("`{pointer}` is empty")))
            }
            Some(Value::String(s)) => Ok(s),
            Some(other) => {
                Err(self.malformed(format!("`{pointer}` is {}, not a string", kind(other))))
            }
        }
    }

    /// An integer at `pointer` (a number, or a string of digits as some gateways send).
    pub(crate) fn integer(&self, pointer: &str) -> Result<i64, GatewayError> {
        match self.get(pointer) {
            None => Err(self.malformed(format!("`{pointer}` is missing"))),
            Some(Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| self.malformed(format!("`{pointer}` is not an integer"))),
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map_err(|_| self.malformed(format!("`{pointer}` is not an integer"))),
            Some(other) => {
                Err(self.malformed(format!("`{pointer}` is {}, not an integer", kind(other))))
            }
        }
    }

    /// A count of seconds at `pointer` — a non-negative JSON number, whole or not (`3600`,
    /// `3600.0`, `3600.5`), or a string of one, as some gateways send — or `None` when the
    /// field is absent or null. Negative, not a finite number, or past `i64::MAX` seconds (as
    /// for an integer that large) is malformed; the cache caps lifetimes at a year anyway.
    pub(crate) fn seconds(&self, pointer: &str) -> Result<Option<Duration>, GatewayError> {
        let Some(value) = self.get(pointer) else {
            return Ok(None);
        };
        let number = match value {
            Value::Number(n) => n.as_u64().map(Seconds::Whole).or_else(|| {
                n.as_i64()
                    .map(|_| Seconds::Negative)
                    .or_else(|| n.as_f64().map(Seconds::Fraction))
            }),
            Value::String(s) => {
                let s = s.trim();
                s.parse::<u64>()
                    .map(Seconds::Whole)
                    .ok()
                    .or_else(|| s.parse::<f64>().ok().map(Seconds::Fraction))
            }
            _ => None,
        };
        const MAX: u64 = i64::MAX as u64;
        match number {
            Some(Seconds::Whole(secs)) if secs <= MAX => Ok(Some(Duration::from_secs(secs))),
            Some(Seconds::Fraction(secs)) if secs.is_finite() && secs < 0.0 => {
                Err(self.malformed(format!("`{pointer}` is negative")))
            }
            Some(Seconds::Fraction(secs)) if secs.is_finite() && secs <= MAX as f64 => Ok(Some(
                Duration::try_from_secs_f64(secs.max(0.0))
                    .map_err(|_| self.malformed(format!("`{pointer}` is out of range")))?,
            )),
            Some(Seconds::Negative) => Err(self.malformed(format!("`{pointer}` is negative"))),
            Some(Seconds::Whole(_) | Seconds::Fraction(_)) => Err(self.malformed(format!(
                "`{pointer}` is not a finite number of seconds up to {MAX}"
            ))),
            None => Err(self.malformed(format!(
                "`{pointer}` is {}, not a number of seconds",
                kind(value)
            ))),
        }
    }

    /// A string or number at `pointer`, as text (for codes and references).
    pub(crate) fn text(&self, pointer: &str) -> Option<String> {
        match self.get(pointer)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// A number of seconds as the answer wrote it.
enum Seconds {
    Whole(u64),
    Negative,
    Fraction(f64),
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The error an answer with error `status` stands for: an RFC 6749 §5.2 error
/// (`{"error": "...", "error_description": "..."}`) when its body is one, else the status.
pub(crate) fn error_answer(gateway: &'static str, status: StatusCode, body: &[u8]) -> GatewayError {
    oauth_error(gateway, status, body).unwrap_or(GatewayError::Status {
        gateway,
        status,
        retry_after: None,
    })
}

fn oauth_error(gateway: &'static str, status: StatusCode, body: &[u8]) -> Option<GatewayError> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?.as_str()?;
    // Error codes are printable ASCII without quotes or backslashes (§5.2); anything else is
    // not a standard error body.
    if error.is_empty()
        || !error
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
    {
        return None;
    }
    let description = value
        .get("error_description")
        .and_then(Value::as_str)
        .map(|d| d.chars().filter(|c| !c.is_control()).take(300).collect());
    Some(GatewayError::OAuth {
        gateway,
        status,
        error: error.to_owned(),
        description,
    })
}
