//! What the sandbox answers: each gateway's token endpoint and API, as its documents describe
//! them, with the faults a test can inject.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::server::*;
pub(crate) fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    respond(status, value.to_string())
}

pub(crate) fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = respond(StatusCode::UNAUTHORIZED, r#"{"error":"invalid_token"}"#);
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static(r#"Bearer realm="sandbox", error="invalid_token""#),
    );
    r
}

pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    header(headers, "authorization").and_then(|v| v.strip_prefix("Bearer "))
}

/// A JWT-shaped token with an `exp` claim (unsigned: the sandbox trusts itself).
pub(crate) fn jwt(exp: SystemTime, id: u64) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let exp = exp.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    format!(
        "{}.{}.{}",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(json!({"exp": exp, "jti": id, "sub": "sandbox"}).to_string()),
        b64.encode(fastrand::u64(..).to_le_bytes())
    )
}

impl State {
    pub(crate) fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, Issued>> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn auth_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, (bool, usize)>> {
        self.authentication_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn fault(&self, gateway: Gateway) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = faults.get_mut(&gateway)?;
        (!queue.is_empty()).then(|| queue.remove(0))
    }

    /// Issues a token for `gateway`, valid for the configured lifetime (whole seconds for JWTs,
    /// which carry seconds).
    pub(crate) fn issue(
        &self,
        gateway: Gateway,
        merchant: usize,
        parent: Option<&str>,
    ) -> (String, SystemTime) {
        let id = self.next.fetch_add(1, Relaxed) + 1;
        let lifetime = Duration::from_millis(self.lifetime_ms.load(Relaxed));
        let mut expires = SystemTime::now() + lifetime;
        let value = match gateway {
            Gateway::Boipa => format!(
                "{:08x}-{id:04}-4000-8000-{:012x}",
                fastrand::u32(..),
                fastrand::u64(..) >> 16
            ),
            Gateway::Torus => format!("torus-{id}-{:016x}", fastrand::u64(..)),
            Gateway::Sipay | Gateway::Payments => {
                let secs = expires
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                expires = UNIX_EPOCH + Duration::from_secs(secs);
                let token = jwt(expires, id);
                if gateway == Gateway::Payments {
                    format!("sandbox_{token}")
                } else {
                    token
                }
            }
        };
        self.tokens().insert(
            value.clone(),
            Issued {
                gateway,
                expires,
                single_use: gateway == Gateway::Boipa,
                used: false,
                parent: parent.map(str::to_owned),
                merchant,
            },
        );
        self.counters[gateway.index()]
            .tokens_issued
            .fetch_add(1, Relaxed);
        self.merchant_counters[gateway.index()][merchant]
            .tokens_issued
            .fetch_add(1, Relaxed);
        (value, expires)
    }

    pub(crate) async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, 1024 * 1024).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return respond(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    r#"{"error":"body too large"}"#,
                );
            }
        };
        let lifetime = Duration::from_millis(self.lifetime_ms.load(Relaxed));
        if let Some(answer) = self.oauth2.handle(&parts, &body, lifetime) {
            return answer;
        }
        let path = parts.uri.path();
        let Some((gateway, rest)) = Gateway::ALL.into_iter().find_map(|g| {
            path.strip_prefix('/')?
                .strip_prefix(g.prefix())
                .map(|rest| (g, rest))
        }) else {
            return respond(StatusCode::NOT_FOUND, r#"{"error":"no such gateway"}"#);
        };
        let issuer_path = match gateway {
            Gateway::Boipa => "/token",
            Gateway::Torus => "/api/v1/session/generate",
            Gateway::Sipay => "/api/token",
            Gateway::Payments => "/session_token",
        };
        if rest != issuer_path {
            return if rest.starts_with("/api/") {
                self.api(gateway, &parts.headers)
            } else {
                respond(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#)
            };
        }
        if parts.method != Method::POST {
            return respond(StatusCode::METHOD_NOT_ALLOWED, r#"{"error":"use POST"}"#);
        }
        self.counters[gateway.index()]
            .token_requests
            .fetch_add(1, Relaxed);
        let merchant = self.identify(gateway, &parts.headers, &body);
        if let Some(m) = merchant {
            self.merchant_counters[gateway.index()][m]
                .token_requests
                .fetch_add(1, Relaxed);
        }
        match self.fault(gateway) {
            Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
            Some(Fault::ServerError) => {
                return respond(StatusCode::SERVICE_UNAVAILABLE, "upstream unavailable");
            }
            Some(Fault::Malformed) => {
                return respond(StatusCode::OK, "<html><body>maintenance</body></html>");
            }
            Some(Fault::RejectCredentials) => return self.refuse(gateway),
            None => {}
        }
        match gateway {
            Gateway::Boipa => self.boipa(merchant, &body),
            Gateway::Torus => self.torus(merchant, &parts.headers, &body),
            Gateway::Sipay => self.sipay(merchant, &body),
            Gateway::Payments => self.payments(&parts.headers),
        }
    }

    /// The merchant a token request's identifying credential names (its secrets unchecked).
    pub(crate) fn identify(
        &self,
        gateway: Gateway,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<usize> {
        let directory = &self.directory;
        match gateway {
            Gateway::Boipa => form_urlencoded::parse(body)
                .find(|(k, _)| k == "merchantId")
                .and_then(|(_, v)| v.parse::<u64>().ok())
                .and_then(|id| directory.boipa.get(&id).copied()),
            Gateway::Torus => {
                let credentials: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                credentials["API_KEY"]
                    .as_str()
                    .and_then(|key| directory.torus.get(key).copied())
            }
            Gateway::Sipay => {
                let credentials: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                credentials["app_id"]
                    .as_str()
                    .and_then(|id| directory.sipay.get(id).copied())
            }
            Gateway::Payments => {
                bearer(headers).and_then(|token| self.auth_tokens().get(token).map(|e| e.1))
            }
        }
    }

    pub(crate) fn refuse(&self, gateway: Gateway) -> Response<Full<Bytes>> {
        match gateway {
            Gateway::Boipa => json_response(
                StatusCode::OK,
                &json!({"result": "failure", "resultId": format!("{:x}", fastrand::u64(..)), "additionalDetails": {},
                        "errors": [{"messageCode": "Invalid merchant credentials", "fieldName": "password"}], "processingTime": 3}),
            ),
            Gateway::Torus | Gateway::Payments => {
                respond(StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#)
            }
            Gateway::Sipay => json_response(
                StatusCode::OK,
                &json!({"status_code": 2, "status_description": "Invalid credentials"}),
            ),
        }
    }

    pub(crate) fn boipa(&self, merchant: Option<usize>, body: &[u8]) -> Response<Full<Bytes>> {
        let fields: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        let mut errors = Vec::new();
        for required in [
            "merchantId",
            "password",
            "action",
            "timestamp",
            "allowOriginUrl",
        ] {
            if fields.get(required).is_none_or(|v| v.is_empty()) {
                errors.push(json!({"messageCode": "This field is required in [REQUEST]", "fieldName": required}));
            }
        }
        let now_ms = i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(i64::MAX);
        // A timestamp from the request is anything a client sent: out of `i64` it is not
        // current, and the distance to now cannot overflow (`abs_diff` is unsigned).
        if let Some(ts) = fields.get("timestamp")
            && ts
                .parse::<i64>()
                .map_or(true, |t| now_ms.abs_diff(t) > 300_000)
        {
            errors
                .push(json!({"messageCode": "Timestamp is not current", "fieldName": "timestamp"}));
        }
        if !matches!(
            fields.get("action").map(String::as_str),
            Some("TOKENIZE" | "AUTH" | "PURCHASE" | "VERIFY") | None
        ) {
            errors.push(json!({"messageCode": "Invalid value", "fieldName": "action"}));
        }
        let known = merchant.map(|m| &self.directory.merchants[m]);
        let good = known.filter(|m| {
            fields.get("password").map(String::as_str) == Some(m.boipa_password.as_str())
        });
        if errors.is_empty() && good.is_none() {
            return self.refuse(Gateway::Boipa);
        }
        let result_id = format!("{:x}", fastrand::u64(..));
        if !errors.is_empty() {
            return json_response(
                StatusCode::OK,
                &json!({"result": "failure", "resultId": result_id, "additionalDetails": {}, "errors": errors, "processingTime": 2}),
            );
        }
        let Some(merchant) = good else {
            return self.refuse(Gateway::Boipa);
        };
        let (token, _) = self.issue(Gateway::Boipa, merchant.index, None);
        json_response(
            StatusCode::OK,
            &json!({"result": "success", "resultId": result_id, "merchantId": merchant.boipa_merchant_id.to_string(),
                    "additionalDetails": {}, "processingTime": 4, "token": token}),
        )
    }

    pub(crate) fn torus(
        &self,
        merchant: Option<usize>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response<Full<Bytes>> {
        let credentials: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let good = merchant.map(|m| &self.directory.merchants[m]).filter(|m| {
            header(headers, "token") == Some(m.torus_request_token.as_str())
                && credentials["API_SECRET"] == m.torus_api_secret.as_str()
        });
        let Some(merchant) = good else {
            return self.refuse(Gateway::Torus);
        };
        let (token, _) = self.issue(Gateway::Torus, merchant.index, None);
        json_response(StatusCode::OK, &json!({"AccessToken": token}))
    }

    pub(crate) fn sipay(&self, merchant: Option<usize>, body: &[u8]) -> Response<Full<Bytes>> {
        let credentials: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let good = merchant
            .map(|m| &self.directory.merchants[m])
            .filter(|m| credentials["app_secret"] == m.sipay_app_secret.as_str());
        let Some(merchant) = good else {
            return self.refuse(Gateway::Sipay);
        };
        let (token, expires) = self.issue(Gateway::Sipay, merchant.index, None);
        // `expires_at` in the gateway's local time (UTC+3), as the real one does
        let local = expires
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            + 3 * 3600;
        json_response(
            StatusCode::OK,
            &json!({"status_code": 100, "status_description": "Successfully Generated token",
                    "data": {"token": token, "is_3d": 1, "expires_at": civil(local)}}),
        )
    }

    pub(crate) fn payments(&self, headers: &HeaderMap) -> Response<Full<Bytes>> {
        let authentication = bearer(headers).map(str::to_owned);
        let merchant = authentication
            .as_deref()
            .and_then(|t| self.auth_tokens().get(t).copied())
            .and_then(|(active, m)| active.then_some(m))
            .filter(|&m| {
                header(headers, "merchant-account")
                    == Some(self.directory.merchants[m].payments_merchant.as_str())
            });
        let Some(merchant) = merchant else {
            return self.refuse(Gateway::Payments);
        };
        let (token, _) = self.issue(Gateway::Payments, merchant, authentication.as_deref());
        json_response(StatusCode::OK, &json!({"token": token}))
    }

    pub(crate) fn api(&self, gateway: Gateway, headers: &HeaderMap) -> Response<Full<Bytes>> {
        let counters = &self.counters[gateway.index()];
        counters.api_requests.fetch_add(1, Relaxed);
        let presented = match gateway {
            Gateway::Boipa | Gateway::Torus => header(headers, "token"),
            Gateway::Sipay | Gateway::Payments => bearer(headers),
        };
        // (whose token it is, whether it is accepted)
        let verdict = presented.and_then(|token| {
            let mut tokens = self.tokens();
            let t = tokens.get_mut(token).filter(|t| t.gateway == gateway)?;
            let merchant = &self.directory.merchants[t.merchant];
            let valid = SystemTime::now() < t.expires
                && !(t.single_use && t.used)
                && (gateway != Gateway::Payments
                    || header(headers, "merchant-account")
                        == Some(merchant.payments_merchant.as_str()));
            if valid {
                t.used = true;
            }
            Some((t.merchant, valid))
        });
        let mine = verdict.map(|(m, _)| &self.merchant_counters[gateway.index()][m]);
        if let Some(c) = mine {
            c.api_requests.fetch_add(1, Relaxed);
        }
        if let Some((merchant, true)) = verdict {
            json_response(
                StatusCode::OK,
                &json!({"ok": true, "gateway": gateway.to_string(), "merchant": merchant}),
            )
        } else {
            counters.unauthorized.fetch_add(1, Relaxed);
            if let Some(c) = mine {
                c.unauthorized.fetch_add(1, Relaxed);
            }
            unauthorized()
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time (H. Hinnant's `civil_from_days`).
pub(crate) fn civil(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn civil_dates() {
        assert_eq!(civil(0), "1970-01-01 00:00:00");
        assert_eq!(civil(1_611_927_961 + 3 * 3600), "2021-01-29 16:46:01");
        assert_eq!(civil(951_868_800), "2000-03-01 00:00:00");
    }
}
