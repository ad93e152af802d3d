//! Logs and traces. Logs go to stderr, human-readable or one JSON object per line
//! (`--log-format`); inside a request every line carries the request's span fields, its id and
//! trace id among them. Traces are OpenTelemetry spans exported over OTLP/gRPC, on only when
//! an OTLP endpoint is configured with the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`
//! or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_BSP_*`, `OTEL_SDK_DISABLED` are honoured too).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Keeps the exporter alive; flushes the spans still buffered when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    // The exporter's gRPC channel lives on this runtime, apart from the servers' own.
    _runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Whether the OTEL_* variables ask for traces.
pub fn traces_configured() -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let none = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled
        && !none
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Sets up logging (level from GRM_LOG or RUST_LOG, else `default_level`) and, when
/// configured and `service` is given, trace export under that default service name.
pub fn init(default_level: &str, format: LogFormat, service: Option<&str>) -> Telemetry {
    let filter = std::env::var("GRM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_level.into());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let fmt = match format {
        LogFormat::Human => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let mut telemetry = Telemetry {
        provider: None,
        _runtime: None,
    };
    let mut export_error = None;
    let otel = match service.filter(|_| traces_configured()) {
        None => None,
        Some(service) => match exporter(service) {
            Ok((provider, runtime)) => {
                let tracer = provider.tracer("grm");
                opentelemetry::global::set_text_map_propagator(
                    opentelemetry_sdk::propagation::TraceContextPropagator::new(),
                );
                telemetry.provider = Some(provider);
                telemetry._runtime = Some(runtime);
                Some(tracing_opentelemetry::layer().with_tracer(tracer))
            }
            Err(e) => {
                export_error = Some(e);
                None
            }
        },
    };
    let _ = tracing_subscriber::registry()
        .with(EnvFilter::new(filter))
        .with(fmt)
        .with(otel)
        .try_init();
    if let Some(e) = export_error {
        tracing::warn!(error = %e, "OpenTelemetry traces are off: the OTLP exporter could not be set up");
    }
    telemetry
}

fn exporter(service: &str) -> anyhow::Result<(SdkTracerProvider, tokio::runtime::Runtime)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("grm-otlp")
        .enable_all()
        .build()?;
    let exporter = runtime.block_on(async {
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
    })?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !env_set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(service.to_string());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    Ok((provider, runtime))
}
