//! Which of imipflow's NATS login settings the wire client speaks.

use crate::wire;

/// The [`wire`] login that `auth` asks for, or `None` when it needs
/// async-nats (TLS, nkey, credentials file); reads password and token files.
/// Credentials in the URL are the wire client's own business.
pub fn wire_login(
    auth: &imipflow_config::NatsAuth,
) -> Result<Option<wire::Login>, imipflow_config::ConfigError> {
    if auth.tls_wanted() || auth.nats_nkey_file.is_some() || auth.nats_creds_file.is_some() {
        return Ok(None);
    }
    if let Some(user) = &auth.nats_user {
        let password = match (&auth.nats_password, &auth.nats_password_file) {
            (Some(p), _) => p.expose().to_owned(),
            (None, Some(path)) => {
                imipflow_config::nats::read_secret("IMIP_NATS_PASSWORD_FILE", path)?
            }
            (None, None) => return Ok(None),
        };
        return Ok(Some(wire::Login::UserPassword(user.clone(), password)));
    }
    let token = match (&auth.nats_token, &auth.nats_token_file) {
        (Some(t), _) => Some(t.expose().to_owned()),
        (None, Some(path)) => Some(imipflow_config::nats::read_secret(
            "IMIP_NATS_TOKEN_FILE",
            path,
        )?),
        (None, None) => None,
    };
    Ok(Some(token.map_or(wire::Login::None, wire::Login::Token)))
}
