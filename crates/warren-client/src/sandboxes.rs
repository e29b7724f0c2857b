//! Sandboxes: their lifecycle, their use, and what the daemon offers to make them with.

use std::collections::BTreeMap;

use hyper::Method;
use serde::{Deserialize, Serialize};
use warren_types::api::{
    BackendInfo, CreateSandbox, Event, ForkRequest, SandboxInfo, SandboxState, SetTimeout,
    UsageSample,
};

use crate::transport::{enc, sandbox_path, Lines};
use crate::{Client, Error};

/// Which sandboxes [`Client::list`] shows; every field left out matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Sandboxes of this owner.
    pub owner: Option<String>,
    /// Sandboxes in this state.
    pub state: Option<SandboxState>,
    /// Labels the sandbox must carry, with these values.
    pub labels: BTreeMap<String, String>,
    /// Metadata the sandbox must carry, with these values.
    pub metadata: BTreeMap<String, String>,
}

impl ListFilter {
    fn query(&self) -> String {
        let mut q = Vec::new();
        if let Some(o) = &self.owner {
            q.push(format!("owner={}", enc(o)));
        }
        if let Some(s) = self.state {
            q.push(format!("state={}", s.as_str()));
        }
        for (name, map) in [("label", &self.labels), ("metadata", &self.metadata)] {
            for (k, v) in map {
                q.push(format!("{name}={}", enc(&format!("{k}={v}"))));
            }
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }
}

/// `GET /health`: the daemon is up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// The daemon's version.
    pub version: String,
    /// Sandboxes live on the host.
    pub sandboxes: usize,
}

/// A template as `GET /v1/templates` shows it: the fields a client reads most, the rest
/// kept in `other` as the daemon sent them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TemplateInfo {
    /// What sandboxes name it by (`template` in [`CreateSandbox`]).
    pub name: String,
    /// How it was made: `builtin`, `image`, `build`, `snapshot`.
    pub kind: String,
    /// The archive, base template or sandbox it was made from, for people.
    pub source: String,
    /// Bytes its own layers take.
    pub size_bytes: u64,
    /// Sandboxes made from it that are not terminated.
    pub used_by: Vec<String>,
    /// Every other field of the daemon's answer.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// `POST /v1/sandboxes/{key}/snapshot`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// The new template's name.
    pub name: String,
    /// Its processes and memory too (a gVisor sandbox on network `none`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory: bool,
}

/// What a snapshot made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotResult {
    /// The new template.
    pub template: TemplateInfo,
    /// Bytes of the new layer: the sandbox's own changes.
    pub bytes_written: u64,
    /// How long it took.
    pub millis: u64,
}

/// The lifecycle events of the tenant's sandboxes as they happen: see
/// [`Client::events`].
#[derive(Debug)]
pub struct Events(Lines);

impl Events {
    /// The next event; `None` when the stream ends (the daemon shut down).
    pub async fn next(&mut self) -> Result<Option<Event>, Error> {
        self.0.next().await
    }
}

impl Client {
    /// `GET /health`; needs no credential.
    pub async fn health(&self) -> Result<Health, Error> {
        self.call(Method::GET, "/health", None::<&()>).await
    }

    /// Makes a sandbox (or, with `name` and `get_or_create`, finds the existing one). The
    /// answer is the only one that carries its `access_token`.
    pub async fn create(&self, req: &CreateSandbox) -> Result<SandboxInfo, Error> {
        self.call(Method::POST, "/v1/sandboxes", Some(req)).await
    }

    /// The tenant's sandboxes that match `filter`.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<SandboxInfo>, Error> {
        let path = format!("/v1/sandboxes{}", filter.query());
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// One sandbox, by id, name or `owner/name`, with its last usage reading.
    pub async fn get(&self, key: &str) -> Result<SandboxInfo, Error> {
        self.call(Method::GET, &sandbox_path(key, ""), None::<&()>)
            .await
    }

    /// Terminates a sandbox: its processes and files go.
    pub async fn remove(&self, key: &str) -> Result<(), Error> {
        self.call_raw(Method::DELETE, &sandbox_path(key, ""), None::<&()>)
            .await
            .map(drop)
    }

    async fn transition(&self, key: &str, verb: &str) -> Result<SandboxInfo, Error> {
        let path = sandbox_path(key, &format!("/{verb}"));
        self.call(Method::POST, &path, None::<&()>).await
    }

    /// Freezes a running sandbox (its processes and memory kept, per backend).
    pub async fn pause(&self, key: &str) -> Result<SandboxInfo, Error> {
        self.transition(key, "pause").await
    }

    /// Thaws a paused sandbox.
    pub async fn resume(&self, key: &str) -> Result<SandboxInfo, Error> {
        self.transition(key, "resume").await
    }

    /// Stops a sandbox: its processes end, its files stay.
    pub async fn stop(&self, key: &str) -> Result<SandboxInfo, Error> {
        self.transition(key, "stop").await
    }

    /// Starts a stopped sandbox again.
    pub async fn start(&self, key: &str) -> Result<SandboxInfo, Error> {
        self.transition(key, "start").await
    }

    /// Changes a sandbox's lifetime, idle timeout or what its timeout does.
    pub async fn set_timeout(&self, key: &str, req: &SetTimeout) -> Result<SandboxInfo, Error> {
        self.call(Method::POST, &sandbox_path(key, "/timeout"), Some(req))
            .await
    }

    /// `count` copies of a running sandbox, each with its own tokens.
    pub async fn fork(&self, key: &str, count: usize) -> Result<Vec<SandboxInfo>, Error> {
        let req = ForkRequest { count: Some(count) };
        self.call(Method::POST, &sandbox_path(key, "/fork"), Some(&req))
            .await
    }

    /// A sandbox's files (with `memory`, its processes too) as a new template.
    pub async fn snapshot(
        &self,
        key: &str,
        req: &SnapshotRequest,
    ) -> Result<SnapshotResult, Error> {
        self.call(Method::POST, &sandbox_path(key, "/snapshot"), Some(req))
            .await
    }

    /// Readings of a live sandbox's CPU, memory and disk (every 5 s, the last half hour),
    /// oldest first; `from` and `to` are Unix milliseconds.
    pub async fn usage(
        &self,
        key: &str,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<Vec<UsageSample>, Error> {
        let mut q = Vec::new();
        if let Some(f) = from {
            q.push(format!("from={f}"));
        }
        if let Some(t) = to {
            q.push(format!("to={t}"));
        }
        let query = if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        };
        let path = sandbox_path(key, &format!("/metrics{query}"));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// A sandbox's lifecycle so far: created, paused, resumed, timed out...
    pub async fn logs(&self, key: &str) -> Result<Vec<Event>, Error> {
        self.call(Method::GET, &sandbox_path(key, "/logs"), None::<&()>)
            .await
    }

    /// Follows the lifecycle events of the tenant's sandboxes from now on.
    pub async fn events(&self) -> Result<Events, Error> {
        let lines = self.lines(Method::GET, "/v1/events", None::<&()>).await?;
        Ok(Events(lines))
    }

    /// The templates the tenant can make sandboxes from.
    pub async fn templates(&self) -> Result<Vec<TemplateInfo>, Error> {
        self.call(Method::GET, "/v1/templates", None::<&()>).await
    }

    /// The isolation backends of the daemon's host: available or why not, and what each
    /// offers.
    pub async fn backends(&self) -> Result<Vec<BackendInfo>, Error> {
        self.call(Method::GET, "/v1/backends", None::<&()>).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_queries() {
        assert_eq!(ListFilter::default().query(), "");
        let f = ListFilter {
            owner: Some("alice".into()),
            state: Some(SandboxState::Paused),
            labels: [("team".to_string(), "a b".to_string())].into(),
            metadata: BTreeMap::new(),
        };
        assert_eq!(f.query(), "?owner=alice&state=paused&label=team%3Da%20b");
    }

    #[test]
    fn templates_keep_fields_this_client_does_not_name() {
        let t: TemplateInfo = serde_json::from_str(
            r#"{"name":"host","kind":"builtin","source":"the host","size_bytes":0,
                "used_by":[],"layers":["a"],"host_base":true}"#,
        )
        .unwrap();
        assert_eq!(t.name, "host");
        assert_eq!(t.other["layers"][0], "a");
    }
}
