//! The Hugging Face Hub path over a real HTTP exchange with a local server on 127.0.0.1 that
//! serves fixture files: redirects, tokens, 404, timeouts and an unreachable endpoint.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vllm_operator::model::Architecture;
use vllm_operator::model::hub::{HubClient, HubError};

const LLAMA: &str = include_str!("fixtures/hub/llama-3.1-8b-instruct.config.json");
const GEMMA3: &str = include_str!("fixtures/hub/gemma-3-27b-it.config.json");

fn response(status: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out += &format!("{k}: {v}\r\n");
    }
    out + "\r\n" + body
}

/// A tiny Hub: answers by path; `/slow/...` never answers.
async fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                let authorized = req
                    .to_ascii_lowercase()
                    .contains("authorization: bearer good-token");
                let reply = match path.as_str() {
                    "/meta-llama/Llama-3.1-8B-Instruct/resolve/main/config.json" => {
                        response("302 Found", &[("location", "/cdn/llama/config.json")], "")
                    }
                    "/cdn/llama/config.json" => {
                        response("200 OK", &[("content-type", "application/json")], LLAMA)
                    }
                    "/google/gemma-3-27b-it/resolve/main/config.json" if authorized => {
                        response("200 OK", &[], GEMMA3)
                    }
                    "/google/gemma-3-27b-it/resolve/main/config.json" => {
                        response("401 Unauthorized", &[], "{}")
                    }
                    "/broken/model/resolve/main/config.json" => {
                        response("200 OK", &[], "{not json")
                    }
                    p if p.starts_with("/slow/") => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    _ => response("404 Not Found", &[], "Entry not found"),
                };
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

fn client(endpoint: String) -> HubClient {
    HubClient {
        endpoint,
        token: None,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn fetches_a_config_through_a_redirect() {
    let hub = client(serve().await);
    let config = hub
        .fetch_config("meta-llama/Llama-3.1-8B-Instruct", "main")
        .await
        .unwrap();
    let arch = Architecture::from_hf_config(&config).unwrap();
    assert_eq!(arch.num_layers, 32);
    assert_eq!(arch.parameters(), 8_030_261_248);
}

#[tokio::test]
async fn gated_models_need_the_token() {
    let mut hub = client(serve().await);
    let err = hub
        .fetch_config("google/gemma-3-27b-it", "main")
        .await
        .unwrap_err();
    assert!(
        matches!(err, HubError::Forbidden { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("gated or private"), "{err}");
    hub.token = Some("good-token".into());
    let config = hub
        .fetch_config("google/gemma-3-27b-it", "main")
        .await
        .unwrap();
    // A vision-language config: the language model is read from text_config.
    assert_eq!(
        Architecture::from_hf_config(&config).unwrap().num_layers,
        62
    );
}

#[tokio::test]
async fn missing_and_malformed_configs_are_named() {
    let hub = client(serve().await);
    let err = hub
        .fetch_config("nobody/nothing", "main")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "nobody/nothing: no such model or revision on the Hub (HTTP 404)"
    );
    let err = hub.fetch_config("broken/model", "main").await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("broken/model: config.json is not valid JSON"),
        "{err}"
    );
}

#[tokio::test]
async fn a_silent_hub_times_out() {
    let mut hub = client(serve().await);
    hub.timeout = Duration::from_millis(300);
    let err = hub.fetch_config("slow/model", "main").await.unwrap_err();
    assert!(matches!(err, HubError::Timeout(..)), "{err}");
    assert!(err.to_string().contains("timed out after 300ms"), "{err}");
}

#[tokio::test]
async fn an_unreachable_hub_says_so() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let hub = client(format!("http://{addr}"));
    let err = hub
        .fetch_config("meta-llama/Llama-3.1-8B-Instruct", "main")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot reach http://{addr}")),
        "{err}"
    );
}
