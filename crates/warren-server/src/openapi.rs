//! The OpenAPI document of the native API, built from the handlers' `#[utoipa::path]`
//! attributes and the wire types' schemas, and served at `GET /openapi.json`.
//! `docs/openapi.json` is a copy of it for readers, kept equal by a test (regenerate it
//! with `WARREN_BLESS=1 cargo test -p warren-server openapi_document_is_checked_in`).
//!
//! The engine's template types live in warren-core, which knows nothing of OpenAPI:
//! their schemas are described here, and a test holds them to serde's field names.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, SchemaType, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use warren_types::spec::Isolation;

/// The document as served, built once.
pub fn document() -> &'static str {
    static DOC: LazyLock<String> = LazyLock::new(|| {
        let mut text = ApiDoc::openapi()
            .to_pretty_json()
            .expect("the document serializes");
        text.push('\n');
        text
    });
    &DOC
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Warren native API",
        description = "Isolated Linux sandboxes on one host. Served on the daemon's unix socket (host root; tenant from X-Warren-Tenant, default `default`) and optionally on TCP (API key as Bearer token; sandbox access token as X-Access-Token on a sandbox's exec, process, file and terminal routes). Every error is `{\"code\",\"message\"}` with a stable code; see docs/api.md.",
        license(name = "Apache-2.0"),
    ),
    servers((url = "http://localhost", description = "curl --unix-socket /run/warren/warren.sock http://localhost/...")),
    tags(
        (name = "daemon"),
        (name = "sandboxes"),
        (name = "processes"),
        (name = "files"),
        (name = "templates", description = "Templates (imported images, builds, snapshots), their layers and disk use."),
        (name = "ssh", description = "Public keys of the SSH gateway (`warren serve --ssh-listen`): `ssh OWNER+SANDBOX@host`."),
        (name = "volumes", description = "The home volumes of the tenant's owners, mounted at /home/user in their sandboxes."),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
    modifiers(&SecuritySchemes, &OptionalBodies, &NoCredential),
    paths(
        crate::sandboxes::health,
        crate::sandboxes::metrics,
        crate::sandboxes::openapi,
        crate::sandboxes::create,
        crate::sandboxes::list,
        crate::sandboxes::get,
        crate::sandboxes::terminate,
        crate::sandboxes::pause,
        crate::sandboxes::port_link,
        crate::sandboxes::resume,
        crate::sandboxes::stop,
        crate::sandboxes::start,
        crate::sandboxes::set_timeout,
        crate::sandboxes::set_egress,
        crate::sandboxes::logs,
        crate::sandboxes::events,
        crate::sandboxes::gc,
        crate::sandboxes::create_key,
        crate::sandboxes::list_keys,
        crate::sandboxes::revoke_key,
        crate::sandboxes::backends,
        crate::sandboxes::fork,
        crate::sandboxes::usage_history,
        crate::exec::exec,
        crate::exec::list,
        crate::exec::signal,
        crate::exec::stdin,
        crate::exec::resize,
        crate::exec::attach,
        crate::exec::pty,
        crate::files::read,
        crate::files::write,
        crate::files::remove,
        crate::files::stat,
        crate::files::list,
        crate::files::mkdir,
        crate::files::rename,
        crate::pools::list,
        crate::pools::set,
        crate::templates::list,
        crate::templates::get,
        crate::templates::remove,
        crate::templates::import,
        crate::templates::upload,
        crate::templates::build,
        crate::templates::gc,
        crate::templates::snapshot,
        crate::templates::disk,
        crate::share::create,
        crate::share::list,
        crate::share::revoke,
        crate::share::join,
        crate::sessions::open,
        crate::sessions::list,
        crate::sessions::get,
        crate::sessions::heartbeat,
        crate::sessions::detach,
        crate::sessions::release,
        crate::ssh_keys::add,
        crate::ssh_keys::list,
        crate::ssh_keys::remove,
        crate::volumes::list,
        crate::volumes::get,
        crate::volumes::remove,
        crate::volumes::resize,
        crate::tenants::list,
        crate::tenants::remove,
    ),
    components(
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            PayloadTooLarge,
            ServerError,
            NoSpace,
            QuotaExceeded,
        ),
    ),
)]
struct ApiDoc;

/// The schemes the operations' `security` names.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "TCP: an API key (POST /v1/keys on the unix socket; the daemon writes \
                         the default tenant's key to $WARREN_DATA_DIR/api-key).",
                    ))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "accessToken",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Access-Token",
                "TCP: a sandbox's access_token; reaches that sandbox's exec, process, file \
                 and terminal routes only. Address the sandbox by id.",
            ))),
        );
        c.add_security_scheme(
            "unixTenant",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Warren-Tenant",
                "Unix socket: no credential; this header names the tenant (default `default`).",
            ))),
        );
    }
}

/// A body a request may leave out is written `Option<T>`, which the generator also
/// makes nullable; a body of `null` is not what that means, so the body's schema is
/// put back to plain `T` (it stays not required).
struct OptionalBodies;

impl Modify for OptionalBodies {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for item in doc.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                let Some(RefOr::T(body)) = &mut op.request_body else {
                    continue;
                };
                for content in body.content.values_mut() {
                    let RefOr::T(content) = content else {
                        continue;
                    };
                    let Some(RefOr::T(Schema::OneOf(one))) = &content.schema else {
                        continue;
                    };
                    if let [schema, RefOr::T(Schema::Object(null))] = one.items.as_slice() {
                        if null.schema_type == SchemaType::Type(Type::Null) {
                            content.schema = Some(schema.clone());
                        }
                    }
                }
            }
        }
    }
}

/// `security(())` on a route that takes no credential is written `[{}]` (a credential is
/// optional); the document says `[]`: none is asked for.
struct NoCredential;

impl Modify for NoCredential {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for item in doc.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                if let Some(security) = &mut op.security {
                    if security
                        .iter()
                        .all(|s| *s == SecurityRequirement::default())
                    {
                        security.clear();
                    }
                }
            }
        }
    }
}

/// The sandbox a route is about.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Only its parameter description is read.
pub(crate) struct SandboxKey {
    // One line: the document keeps a doc comment's line breaks.
    /// Sandbox id, name (of the owner named like the tenant), or owner/name url-encoded (owner%2Fname). With an access token, the id.
    key: String,
}

/// The process a route is about.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Only its parameter description is read.
pub(crate) struct ProcessId {
    /// Process id inside the sandbox.
    pid: u32,
}

/// Raw bytes: a file, a stdin write, an archive.
pub(crate) struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl ToSchema for Binary {}

/// Any JSON object (this document, at `/openapi.json`).
pub(crate) struct AnyObject;

impl utoipa::PartialSchema for AnyObject {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(Type::Object).into()
    }
}

impl ToSchema for AnyObject {}

/// The error responses every operation shares, each naming the codes it carries (a
/// test holds each code to its status).
macro_rules! error_responses {
    ($($name:ident: $desc:literal,)*) => {$(
        pub(crate) struct $name;

        impl<'r> utoipa::ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), error_response($desc).into())
            }
        }
    )*};
}

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build(),
        )
        .build()
}

error_responses! {
    BadRequest: "Bad input: invalid_request, invalid_json, or an agent code (is_a_directory, not_a_directory, not_a_file, not_empty, command_not_found).",
    Unauthorized: "No or wrong credentials (TCP): unauthorized.",
    Forbidden: "Not allowed: permission_denied (a file operation the sandbox refused; host directory mounts asked for anywhere but the unix socket).",
    NotFound: "not_found (no such sandbox, or another tenant's), file_not_found, process_not_found.",
    Conflict: "invalid_state (the sandbox is not in a state that allows this; its agent is gone), name_taken, already_exists.",
    PayloadTooLarge: "payload_too_large: over 1 MiB of JSON, 128 MiB of raw body, 64 MiB of collected exec output, or a template archive over its limit (8 GiB, or the upload's `max_bytes`).",
    ServerError: "backend_failed, store_error, agent_error, io_error.",
    NoSpace: "no_space: the sandbox's disk, or the host's data directory, is full.",
    QuotaExceeded: "A quota of the caller's tenant would be passed (`quota_exceeded`): sandboxes, their memory or disk limits added up, template builds at once, or free host ports.",
}

// The engine's template types, as serde writes them (see the module's doc).

/// How a template was made.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum TemplateKind {
    Builtin,
    Image,
    Build,
    Snapshot,
    /// The files a fork's copies start from: never listed.
    Fork,
}

/// What a template that carries memory holds.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct SavedMemory {
    /// The owner's home volume was mounted; its sandboxes mount it again.
    home_volume: bool,
    /// Bytes of the memory image.
    image_bytes: u64,
}

/// A template as the API shows it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct TemplateInfo {
    name: String,
    kind: TemplateKind,
    /// The archive, base template or sandbox it was made from, for people.
    source: String,
    /// Layer ids, top first.
    layers: Vec<String>,
    /// Stacked on the `host` template's tree.
    host_base: bool,
    env: BTreeMap<String, String>,
    workdir: Option<String>,
    /// Who processes run as when they name nobody: `name`, `uid` or `uid:gid`.
    user: Option<String>,
    /// The image's entrypoint and command, as it declared them.
    cmd: Vec<String>,
    /// Run in the background whenever a sandbox made from it starts.
    start_cmd: Option<String>,
    /// Polled until it exits 0 before a sandbox counts as running.
    ready_cmd: Option<String>,
    ready_timeout_secs: Option<u64>,
    /// Unix milliseconds.
    created_at: i64,
    /// The tenant that made it.
    tenant: Option<String>,
    /// The sandbox a snapshot was taken of.
    #[schema(required = false)]
    source_sandbox: Option<String>,
    /// Its tenant's alone.
    private: bool,
    /// The backend its sandboxes get when their request names none (an E2B create names
    /// none); the daemon's default when absent.
    #[schema(required = false)]
    isolation: Option<Isolation>,
    /// Its setuid programs work inside its sandboxes (see ImportTemplate.setuid); absent
    /// when false.
    #[schema(required = false)]
    setuid: bool,
    /// Present when it carries a sandbox's processes and memory (SnapshotRequest.memory):
    /// its sandboxes are restored on the gvisor backend, on network none, and go on from
    /// that moment.
    #[schema(required = false)]
    memory: Option<SavedMemory>,
    /// Bytes its own layers take (layers shared with other templates count in each).
    size_bytes: u64,
    /// Sandboxes made from it that are not terminated.
    used_by: Vec<String>,
}

/// `POST /v1/templates/import`: an archive on the daemon's host.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct ImportTemplate {
    /// Absolute path of a `docker save` or OCI layout archive on the daemon's host.
    archive: String,
    name: String,
    #[serde(default)]
    start_cmd: Option<String>,
    #[serde(default)]
    ready_cmd: Option<String>,
    #[serde(default)]
    ready_timeout_secs: Option<u64>,
    /// Most bytes the layers may unpack to (default 32 GiB).
    #[serde(default)]
    max_bytes: Option<u64>,
    /// The backend its sandboxes get when their request names none (an E2B create names
    /// none); the daemon's default when absent.
    #[serde(default)]
    isolation: Option<Isolation>,
    /// Keep the image's setuid programs working inside its sandboxes, so its sudo raises
    /// a process to the sandbox's root and no further (processes then run without
    /// no_new_privs; seccomp and the capability bounding set stay). The operator's alone
    /// to ask, for an image it trusts.
    #[serde(default)]
    setuid: bool,
}

/// What an import made.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ImportResult {
    template: TemplateInfo,
    new_layers: u64,
    shared_layers: u64,
    /// Device nodes skipped, setuid bits cleared, owners clamped: what was neutralised.
    warnings: Vec<String>,
}

/// How far an import has come: the layers' bytes read, as the archive stores them
/// (compressed or not), of all its layers'.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ImportProgress {
    /// The layer being unpacked, from 1.
    layer: u64,
    layers: u64,
    bytes: u64,
    total_bytes: u64,
}

/// A line of an import's progress (NDJSON on the wire, with `progress=true`), tagged
/// by `type`; the last is `done` or `error`.
#[derive(ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum ImportEvent {
    Progress(ImportProgress),
    Done { result: Box<ImportResult> },
    Error { code: String, message: String },
}

/// `POST /v1/templates/build`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct BuildTemplate {
    name: String,
    /// The base template (default: host).
    #[serde(default)]
    from: Option<String>,
    /// Shell commands (`sh -c`), run in order as root; the first to fail ends the build.
    #[serde(default)]
    steps: Vec<String>,
    /// Environment of the steps, kept in the template.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Give the steps outbound network (NAT).
    #[serde(default)]
    network: bool,
    /// Working directory of the steps and of the template's processes (made if missing).
    #[serde(default)]
    workdir: Option<String>,
    /// Who the template's processes run as when they name nobody, in their home:
    /// `name`, `uid` or `uid:gid` (default: the base template's, else root). The steps
    /// run as root; a name must exist once they have run (`useradd -m NAME` in a step).
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    start_cmd: Option<String>,
    #[serde(default)]
    ready_cmd: Option<String>,
    #[serde(default)]
    ready_timeout_secs: Option<u64>,
    /// Most seconds one step may run (default 3600).
    #[serde(default)]
    step_timeout_secs: Option<u64>,
    /// The backend its sandboxes get when their request names none (default: the base
    /// template's). The steps themselves run in a namespace sandbox.
    #[serde(default)]
    isolation: Option<Isolation>,
}

/// A line of a build's progress (NDJSON on the wire), tagged by `type`.
#[derive(ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum BuildEvent {
    Step {
        index: u64,
        count: u64,
        command: String,
    },
    /// Output of the running step (UTF-8, invalid bytes replaced).
    Output {
        stream: String,
        data: String,
    },
    /// The steps are done; the files are being captured.
    Capturing,
    Done {
        template: Box<TemplateInfo>,
    },
    Error {
        code: String,
        message: String,
    },
}

/// `POST /v1/sandboxes/{key}/snapshot`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct SnapshotRequest {
    name: String,
    /// Its processes and memory too (a running or paused gvisor sandbox on network
    /// none): sandboxes made from the template go on from that moment, warm. Default
    /// false: its files only.
    #[serde(default)]
    memory: bool,
}

/// What a snapshot made and cost.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct SnapshotResult {
    template: TemplateInfo,
    /// Bytes of the new layer: the sandbox's own changes, nothing of its base.
    bytes_written: u64,
    millis: u64,
}

/// What the layer collector removed (or would).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct LayerGcResult {
    layers: Vec<String>,
    bytes: u64,
    /// Kept files of builds that never finished.
    build_leftovers: Vec<String>,
}

/// Disk used per template and per sandbox.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct DiskUsage {
    templates: Vec<UsageRow>,
    sandboxes: Vec<UsageRow>,
    /// The layers of those templates together, each counted once.
    layers_bytes: u64,
    /// The host's disk, for the operator.
    #[schema(required = false)]
    host: Option<HostDisk>,
}

/// The data directory's disk and what the sparse disk images on it may still take (the
/// operator's only).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct HostDisk {
    free_bytes: u64,
    /// The sizes of every sandbox's disk image and every sized volume, added up.
    images_bytes: u64,
    /// What those images may still take as their sandboxes write; more than free_bytes
    /// means the disk can fill first.
    unbacked_bytes: u64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct UsageRow {
    name: String,
    bytes: u64,
}
