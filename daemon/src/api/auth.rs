//! Who may use the control API: on the Unix socket, the daemon's own user and root
//! (checked from the connection's SO_PEERCRED); on the optional TCP listener, any
//! client that presents the API token.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::transport::server::{TcpConnectInfo, UdsConnectInfo};
use tonic::{Request, Status};
use tracing::warn;

/// Checks every request before any service sees it.
#[derive(Clone)]
pub struct Authorizer {
    own_uid: u32,
    /// Expected `Bearer <token>` value for TCP clients; `None` refuses all TCP.
    bearer: Option<Arc<str>>,
}

impl Authorizer {
    /// Serves `own_uid` and root over the socket, and holders of `token` over TCP.
    pub fn new(own_uid: u32, token: Option<&str>) -> Self {
        Authorizer { own_uid, bearer: token.map(|t| Arc::from(format!("Bearer {t}"))) }
    }

    fn check(&self, request: &Request<()>) -> Result<(), Status> {
        if let Some(info) = request.extensions().get::<UdsConnectInfo>() {
            return match info.peer_cred.map(|cred| cred.uid()) {
                Some(uid) if uid == self.own_uid || uid == 0 => Ok(()),
                Some(uid) => {
                    warn!(uid, "refused a control connection from another user");
                    Err(Status::permission_denied(format!(
                        "this voiced belongs to uid {}; uid {uid} may not use it (start your own daemon)",
                        self.own_uid
                    )))
                }
                None => Err(Status::permission_denied("the client's credentials cannot be read")),
            };
        }
        if request.extensions().get::<TcpConnectInfo>().is_some() {
            let given = request.metadata().get(voicelink_proto::AUTHORIZATION_HEADER).map(|v| v.as_bytes());
            return match (&self.bearer, given) {
                (Some(expected), Some(given)) if bool::from(expected.as_bytes().ct_eq(given)) => Ok(()),
                (Some(_), _) => Err(Status::unauthenticated(
                    "a valid API token is required: send `authorization: Bearer <token>` with the token \
                     from the daemon's data directory (api-token)",
                )),
                (None, _) => Err(Status::permission_denied("TCP access is not enabled")),
            };
        }
        Err(Status::permission_denied("unknown transport"))
    }
}

impl tonic::service::Interceptor for Authorizer {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request).map(|()| request)
    }
}
