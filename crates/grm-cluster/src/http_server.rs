//! The HTTP listeners (`/get_reward`, `/health`, `/metrics`) and what keeps them up under
//! slow or hostile clients: a time limit on a request's headers, on its body and on an idle
//! connection, a cap on open connections, and a TLS handshake bounded in time off the accept
//! loop. At the cap, the connection that has been idle longest (or is still sending its
//! headers) gives way to the new one, so a flood of half-open connections cannot lock out a
//! probe or a trainer; only when every connection is busy is the newcomer turned away.

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

/// Limits of an HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A request's headers must arrive within this (the connection is closed otherwise).
    pub header_timeout: Duration,
    /// A request's body must arrive within this (408 otherwise).
    pub body_timeout: Duration,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// Largest request body (413 beyond).
    pub max_body_bytes: usize,
    /// Body bytes held at once over all connections; past it a body waits for room (within
    /// the body timeout, then 503).
    pub bodies_in_flight_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_body_bytes: 64 << 20,
            bodies_in_flight_bytes: 256 << 20,
        }
    }
}

/// A JSON error body, the shape of every error the HTTP side answers.
pub fn json_error(code: StatusCode, msg: String) -> Response {
    (code, axum::Json(serde_json::json!({ "error": msg }))).into_response()
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Requests being answered on it.
    busy: Arc<AtomicUsize>,
    /// When it last finished a request (or opened), in ms since the listener started.
    last_active: Arc<AtomicU64>,
    close: Arc<Notify>,
}

#[derive(Default)]
struct Registry {
    next: u64,
    conns: HashMap<u64, Conn>,
}

impl Registry {
    /// Makes room for one more connection under `max`: closes the idle connection that has
    /// waited longest. False when every connection is busy.
    fn make_room(&mut self, max: usize) -> bool {
        if self.conns.len() < max {
            return true;
        }
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| c.busy.load(Ordering::SeqCst) == 0)
            .min_by_key(|(_, c)| c.last_active.load(Ordering::SeqCst))
            .map(|(&id, _)| id);
        match victim.and_then(|id| self.conns.remove(&id)) {
            Some(c) => {
                c.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Gives memory back to the OS after a burst of connections: their buffers are freed when they
/// close, but glibc's allocator keeps the pages unless asked (`malloc_trim`).
#[derive(Default)]
struct Trim {
    peak: usize,
}

impl Trim {
    fn observe(&mut self, open: usize) {
        self.peak = self.peak.max(open);
        if self.peak >= 256 && open <= self.peak / 8 {
            self.peak = open;
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim only releases free memory of the allocator's arenas.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// Decides from a request's head alone (method, path, headers) whether it may send its body:
/// a response to answer at once, before a byte of the body is read (a missing token), or
/// None to go on.
pub type Gate = Arc<dyn Fn(&axum::http::request::Parts) -> Option<Response> + Send + Sync>;

/// What reading a body needs: the limits, the gate, and the budget of body bytes in flight.
#[derive(Clone)]
struct BodyState {
    limits: HttpLimits,
    gate: Option<Gate>,
    budget: Arc<tokio::sync::Semaphore>,
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown` resolves; then open
/// connections finish their requests and close.
pub async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_http_gated(listener, app, None, tls, limits, shutdown).await
}

/// [`serve_http`], with every request's head put to `gate` before its body is read.
pub async fn serve_http_gated(
    listener: TcpListener,
    app: axum::Router,
    gate: Option<Gate>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = BodyState {
        limits,
        gate,
        budget: Arc::new(tokio::sync::Semaphore::new(
            limits
                .bodies_in_flight_bytes
                .clamp(limits.max_body_bytes, tokio::sync::Semaphore::MAX_PERMITS),
        )),
    };
    let app = app.layer(axum::middleware::from_fn_with_state(state, read_body));
    let start = Instant::now();
    let registry = Arc::new(Mutex::new(Registry::default()));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut trim = Trim::default();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                let open = registry.lock().unwrap_or_else(|e| e.into_inner()).conns.len();
                trim.observe(open);
                continue;
            }
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (id, conn) = {
            let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
            if !reg.make_room(limits.max_connections.max(1)) {
                tracing::warn!(%peer, max = limits.max_connections, "every HTTP connection is busy; refusing one");
                continue;
            }
            let now = start.elapsed().as_millis() as u64;
            let conn = Conn {
                busy: Arc::new(AtomicUsize::new(0)),
                last_active: Arc::new(AtomicU64::new(now)),
                close: Arc::new(Notify::new()),
            };
            let handles = Conn {
                busy: Arc::clone(&conn.busy),
                last_active: Arc::clone(&conn.last_active),
                close: Arc::clone(&conn.close),
            };
            reg.next += 1;
            let id = reg.next;
            reg.conns.insert(id, conn);
            (id, handles)
        };
        let (app, acceptor, registry, stop) = (
            app.clone(),
            acceptor.clone(),
            Arc::clone(&registry),
            stop_rx.clone(),
        );
        tokio::spawn(async move {
            serve_connection(tcp, acceptor, app, &conn, start, limits, stop).await;
            registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .conns
                .remove(&id);
        });
    }
    let _ = stop_tx.send(true);
    // Let open connections finish what they are answering (bounded, like a request).
    let end = Instant::now() + limits.body_timeout;
    while Instant::now() < end
        && !registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .conns
            .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn serve_connection(
    tcp: TcpStream,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    conn: &Conn,
    start: Instant,
    limits: HttpLimits,
    stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    match acceptor {
        None => drive(tcp, app, conn, start, limits, stop).await,
        Some(acceptor) => {
            let handshake = tokio::select! {
                r = tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)) => r,
                _ = conn.close.notified() => return,
            };
            match handshake {
                Ok(Ok(stream)) => drive(stream, app, conn, start, limits, stop).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }
}

/// Runs HTTP on one connection until it ends, is evicted, idles out or the server stops.
async fn drive<I>(
    io: I,
    app: axum::Router,
    conn: &Conn,
    start: Instant,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (busy, last_active) = (Arc::clone(&conn.busy), Arc::clone(&conn.last_active));
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (app, busy, last_active) = (app.clone(), Arc::clone(&busy), Arc::clone(&last_active));
        async move {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(Busy(busy));
            let resp = tower::ServiceExt::oneshot(app, req).await;
            last_active.store(start.elapsed().as_millis() as u64, Ordering::SeqCst);
            resp
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)));
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut tick = tokio::time::interval(Duration::from_millis(500).min(limits.idle_timeout));
    let mut closing = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = conn.close.notified(), if !closing => {
                // Evicted at the cap: a connection answering nothing (idle, or still sending
                // a request's head or body) is closed now, not when its timeouts run out.
                if conn.busy.load(Ordering::SeqCst) == 0 {
                    return;
                }
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = async { let _ = stop.wait_for(|&v| v).await; }, if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tick.tick() => {
                let idle_ms = start.elapsed().as_millis() as u64
                    - conn.last_active.load(Ordering::SeqCst).min(start.elapsed().as_millis() as u64);
                let idle = conn.busy.load(Ordering::SeqCst) == 0
                    && Duration::from_millis(idle_ms) >= limits.idle_timeout;
                if idle && !closing {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                } else if closing && idle_ms > limits.idle_timeout.as_millis() as u64 + 5_000 {
                    // A peer that ignores the close (HTTP/2 GOAWAY) is dropped.
                    return;
                }
            }
        }
    }
}

/// A connection's count of requests being answered, marked by [`read_body`] once a request
/// is complete: a client still sending its body is as evictable as an idle one.
#[derive(Clone)]
struct Busy(Arc<AtomicUsize>);

/// Decrements on drop, so a cancelled handler is counted out too.
struct BusyGuard(Option<Arc<AtomicUsize>>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Reads a request's body before the handler runs, once the gate has passed its head: within
/// the body timeout (408), the size limit (413) and the budget of bodies in flight (503), all
/// answered in JSON like every other error.
async fn read_body(
    axum::extract::State(state): axum::extract::State<BodyState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let limits = state.limits;
    let (parts, body) = req.into_parts();
    if let Some(refused) = state.gate.as_ref().and_then(|g| g(&parts)) {
        // Refused on its head: the body is never read, and the connection is closed after
        // the answer, so an unread body cannot hold it.
        let mut refused = refused;
        refused.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return refused;
    }
    let too_large = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is over {} bytes, the limit (--http-max-body-mib)",
                limits.max_body_bytes
            ),
        )
    };
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return too_large();
    }
    let read = async {
        let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(1 << 20) as usize);
        // Room in the budget for each chunk before it is kept; held until the answer.
        let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                json_error(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body: {e}"),
                )
            })?;
            if buf.len() + chunk.len() > limits.max_body_bytes {
                return Err(too_large());
            }
            let room = Arc::clone(&state.budget)
                .acquire_many_owned(chunk.len() as u32)
                .await
                .map_err(|_| json_error(StatusCode::SERVICE_UNAVAILABLE, "stopping".into()))?;
            match held.as_mut() {
                Some(h) => h.merge(room),
                None => held = Some(room),
            }
            buf.extend_from_slice(&chunk);
        }
        Ok((buf, held))
    };
    match tokio::time::timeout(limits.body_timeout, read).await {
        Err(_) if state.budget.available_permits() < limits.max_body_bytes => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the listener holds {} bytes of request bodies, its limit (--http-bodies-in-flight-mib), and this one did not find room within {} s; retry",
                limits.bodies_in_flight_bytes,
                limits.body_timeout.as_secs_f64()
            ),
        ),
        Err(_) => json_error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                limits.body_timeout.as_secs_f64()
            ),
        ),
        Ok(Err(resp)) => resp,
        Ok(Ok((bytes, _held))) => {
            let busy = parts.extensions.get::<Busy>().map(|b| Arc::clone(&b.0));
            if let Some(b) = &busy {
                b.fetch_add(1, Ordering::SeqCst);
            }
            let _guard = BusyGuard(busy);
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }
}
