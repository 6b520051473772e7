//! The control API server: gRPC (tonic) on the private Unix socket, and on an
//! optional token-protected TCP listener, with the standard health and reflection
//! services so generic gRPC tools work without our .proto.

mod auth;
mod convert;
mod service;
mod socket;
mod unix_authority;

use std::net::SocketAddr;

use tokio_stream::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::service::InterceptorLayer;
use tonic::transport::Server;
use tracing::info;
use voicelink_proto::v1::FILE_DESCRIPTOR_SET;
use voicelink_proto::v1::voicelink_server::VoicelinkServer;

pub use auth::Authorizer;
pub use service::{Backends, ControlService, DaemonInfo};
pub use socket::{ControlSocket, SocketError};

/// Why the API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built from our descriptor.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The server failed.
    #[error("the control API server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The optional TCP listener and its token.
pub struct TcpApi {
    /// The bound listener.
    pub listener: tokio::net::TcpListener,
    /// The token clients must present.
    pub token: String,
}

/// Serves the API until `shutdown`, then returns once open calls have finished.
pub async fn serve(
    unix: tokio::net::UnixListener,
    tcp: Option<TcpApi>,
    service: ControlService,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let own_uid = nix::unistd::geteuid().as_raw();
    // Unix-socket clients may send any authority (see unix_authority).
    let unix_connections =
        UnixListenerStream::new(unix).map(|accepted| accepted.map(unix_authority::rewrite_authority));
    let unix = router(Authorizer::new(own_uid, None), service.clone())
        .await?
        .serve_with_incoming_shutdown(unix_connections, shutdown.clone().cancelled_owned());
    match tcp {
        None => unix.await?,
        Some(TcpApi { listener, token }) => {
            let address: Option<SocketAddr> = listener.local_addr().ok();
            info!(address = ?address, "control API also listening on TCP (token required)");
            let tcp = router(Authorizer::new(own_uid, Some(&token)), service)
                .await?
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned());
            let (unix, tcp) = tokio::join!(unix, tcp);
            unix?;
            tcp?;
        }
    }
    Ok(())
}

async fn router(
    authorizer: Authorizer,
    service: ControlService,
) -> Result<
    tonic::transport::server::Router<
        tower::layer::util::Stack<InterceptorLayer<Authorizer>, tower::layer::util::Identity>,
    >,
    ServeError,
> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<VoicelinkServer<ControlService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Both versions: grpcurl 1.8 and grpcio-reflection's Python client still speak
    // v1alpha only.
    let (reflection_v1, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    Ok(Server::builder()
        .layer(InterceptorLayer::new(authorizer))
        .add_service(VoicelinkServer::new(service))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha))
}
