//! How this command reaches the API: the proxy the environment names (`HTTPS_PROXY`,
//! `NO_PROXY`), one kept connection per endpoint, and `--debug`'s line per request.

use std::net::SocketAddr;
use std::sync::Arc;

use bamf_client::https::{Api, Exchange};
use bamf_client::proxy::Proxies;

use crate::error::{Error, Result};
use crate::output;

/// The network settings of one command, read once from its flags and environment.
#[derive(Debug, Clone)]
pub struct Net {
    proxies: Proxies,
    debug: bool,
}

impl Net {
    /// From the environment's proxy variables; `debug` prints each request on stderr.
    ///
    /// # Errors
    ///
    /// A proxy variable that is not a URL (a usage error).
    pub fn from_env(debug: bool) -> Result<Self> {
        let proxies = Proxies::from_env().map_err(|e| Error::usage(e.to_string()))?;
        Ok(Self { proxies, debug })
    }

    /// An endpoint for `url` with `tls`, dialled at `via` when given: through the proxy for
    /// its host, keeping its connection for the command's next request.
    ///
    /// # Errors
    ///
    /// The URL is not `https://host[:port]` (a usage error).
    pub fn endpoint(
        &self,
        url: &str,
        tls: Arc<rustls::ClientConfig>,
        via: Option<SocketAddr>,
    ) -> Result<Api> {
        let api = Api::new(url, tls)
            .map_err(|e| Error::usage(format!("{url}: {e}")))?
            .connect_to(via)
            .with_proxies(self.proxies.clone())
            .pooled();
        Ok(if self.debug {
            api.observed(Arc::new(debug_line))
        } else {
            api
        })
    }
}

/// `--debug`: method, path, status, time and request id; never headers or bodies.
fn debug_line(x: &Exchange<'_>) {
    let status = x
        .status
        .map_or_else(|| "no answer".to_owned(), |s| s.as_u16().to_string());
    let connection = if x.reused {
        "kept connection"
    } else {
        "new connection"
    };
    output::debug(format!(
        "{} {} -> {status} in {} ms, request id {} ({connection})",
        x.method,
        x.path,
        x.elapsed.as_millis(),
        x.request_id.unwrap_or("-"),
    ));
}
