//! A merchant server's session-token endpoint, as the `merchant_server` and `client_app`
//! examples run it: it authenticates its client apps (here, by a shared key) and mints a
//! session token for each request with one of its authentication tokens.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use tokenwarden_gateways::payments::SessionTokens;

/// The key the demo client apps authenticate with.
pub const CLIENT_KEY: &str = "demo-client-app-key";

/// The authentication-token use case session tokens are minted under.
pub const USE_CASE: &str = "client-apps";

async fn session(
    State(sessions): State<SessionTokens>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    if headers.get("x-client-key").and_then(|v| v.to_str().ok()) != Some(CLIENT_KEY) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "unknown client app"})),
        );
    }
    match sessions.mint(USE_CASE).await {
        Ok(token) => (
            StatusCode::OK,
            Json(json!({"token": token.secret().expose()})),
        ),
        // The error names the gateway and status, never a credential.
        Err(error) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({"error": error.chain()})),
        ),
    }
}

/// Serves `POST /session` on an ephemeral loopback port; returns its address.
pub async fn serve(sessions: SessionTokens) -> std::io::Result<SocketAddr> {
    let app = axum::Router::new()
        .route("/session", post(session))
        .with_state(sessions);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}
