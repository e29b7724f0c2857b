//! The SSH gateway's public keys over the API: a tenant registers, lists and removes the
//! keys its owners sign in with (`ssh OWNER+SANDBOX@host`).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use warren_types::api::{AddSshKey, SshKey};

use crate::error::Error;
use crate::extract::{Json, Path, Query, Tenant};
use crate::AppState;

/// Longest public key line taken (an RSA key of 16,384 bits is about 2.8 KB).
const MAX_KEY_LINE: usize = 16 << 10;

/// Parses one line of an OpenSSH public key file into the key as kept: its owner,
/// fingerprint, algorithm, comment and the key without its comment.
pub(crate) fn parse(owner: &str, line: &str) -> Result<SshKey, Error> {
    let line = line.trim();
    if line.len() > MAX_KEY_LINE || line.contains('\n') {
        return Err(Error::invalid(
            "public_key: give one line of a public key file (`ssh-ed25519 AAAA... comment`)",
        ));
    }
    let key = russh::keys::PublicKey::from_openssh(line).map_err(|e| {
        Error::invalid(format!(
            "public_key: not an OpenSSH public key ({e}); give the .pub file's line, \
             e.g. `ssh-ed25519 AAAA... you@laptop`"
        ))
    })?;
    let comment = key.comment().as_str_lossy().to_string();
    let mut bare = key.clone();
    bare.set_comment("");
    let public_key = bare
        .to_openssh()
        .map_err(|e| Error::invalid(format!("public_key: {e}")))?
        .trim()
        .to_string();
    Ok(SshKey {
        owner: owner.to_string(),
        fingerprint: key.fingerprint(russh::keys::HashAlg::Sha256).to_string(),
        algorithm: key.algorithm().as_str().to_string(),
        comment,
        public_key,
        template: None,
        created_at: 0,
    })
}

/// `POST /v1/ssh-keys`: registers a key for one of the tenant's owners.
#[utoipa::path(
    post,
    path = "/v1/ssh-keys",
    operation_id = "addSshKey",
    tag = "ssh",
    summary = "Register a public key an owner signs in to the SSH gateway with; the same key again answers the one kept.",
    request_body(content = warren_types::api::AddSshKey, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered.", body = warren_types::api::SshKey, content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn add(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Json(req): Json<AddSshKey>,
) -> Result<(StatusCode, axum::Json<SshKey>), Error> {
    let key = SshKey {
        template: req.template,
        ..parse(&req.owner, &req.public_key)?
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(st.mgr.add_ssh_key(&who, key)?),
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default, deny_unknown_fields)]
pub struct OwnerQuery {
    /// Only this owner's keys.
    owner: Option<String>,
}

/// `GET /v1/ssh-keys?owner=`: the tenant's keys, of one owner or all.
#[utoipa::path(
    get,
    path = "/v1/ssh-keys",
    operation_id = "listSshKeys",
    tag = "ssh",
    summary = "The tenant's SSH keys, oldest first.",
    params(
        OwnerQuery,
    ),
    responses(
        (status = 200, description = "The keys.", body = [warren_types::api::SshKey], content_type = "application/json"),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn list(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Query(q): Query<OwnerQuery>,
) -> Result<axum::Json<Vec<SshKey>>, Error> {
    Ok(axum::Json(st.mgr.ssh_keys(&who, q.owner.as_deref())?))
}

/// `DELETE /v1/ssh-keys/{fingerprint}?owner=`: removes a key (of one owner, or of every
/// owner of the tenant that has it).
#[utoipa::path(
    delete,
    path = "/v1/ssh-keys/{fingerprint}",
    operation_id = "removeSshKey",
    tag = "ssh",
    summary = "Remove a key (of one owner, or of every owner of the tenant that has it).",
    params(
        ("fingerprint" = String, Path, description = "`SHA256:...` as `ssh-keygen -l` prints it (percent-encoded)."),
        OwnerQuery,
    ),
    responses(
        (status = 204, description = "Removed."),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, response = crate::openapi::NotFound),
    ),
    security(("bearerAuth" = []), ("unixTenant" = [])),
)]
pub async fn remove(
    State(st): State<AppState>,
    Tenant(who): Tenant,
    Path(fingerprint): Path<String>,
    Query(q): Query<OwnerQuery>,
) -> Result<StatusCode, Error> {
    st.mgr
        .remove_ssh_key(&who, &fingerprint, q.owner.as_deref())?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_key_line_is_parsed_and_fingerprinted_as_ssh_keygen_does() {
        // `ssh-keygen -l -f` of this key prints
        // 256 SHA256:b4CYU+H4HeTjHJPTa8kgCc8+FalQlJEq8InpdFYPWPc test@example (ED25519)
        let bare = "ssh-ed25519 \
            AAAAC3NzaC1lZDI1NTE5AAAAILygCRey9yNsiYBd67/S7mZXcMkQK5GkS4HReJLqAeKh";
        let k = parse("alice", &format!("  {bare} test@example\n")).unwrap();
        assert_eq!(k.algorithm, "ssh-ed25519");
        assert_eq!(k.comment, "test@example");
        assert_eq!(
            k.fingerprint,
            "SHA256:b4CYU+H4HeTjHJPTa8kgCc8+FalQlJEq8InpdFYPWPc"
        );
        assert_eq!(k.public_key, bare);
        for bad in [
            "",
            "ssh-ed25519",
            "not a key",
            "ssh-ed25519 AAAA\nssh-rsa AAAA",
        ] {
            assert!(parse("alice", bad).is_err(), "{bad:?}");
        }
    }
}
