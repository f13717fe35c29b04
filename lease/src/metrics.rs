//! Counting AWS calls: an SDK interceptor that both the worker and the operator attach to
//! their clients, counting into Prometheus families the caller registers.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Labels naming an AWS API call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsLabels {
    /// `kinesis` or `dynamodb`.
    pub service: String,
    /// The operation, e.g. `GetRecords`.
    pub api: String,
}

/// Labels naming a failed AWS API call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsErrorLabels {
    /// `kinesis` or `dynamodb`.
    pub service: String,
    /// The operation.
    pub api: String,
    /// The HTTP status, or `none` when no response came (connection refused, timeout).
    pub status: String,
}

/// Counts every AWS call and failure of the clients it is attached to (by operation).
#[derive(Debug, Clone)]
pub struct AwsCallCounter {
    calls: Family<AwsLabels, Counter>,
    errors: Family<AwsErrorLabels, Counter>,
}

impl AwsCallCounter {
    /// Counts calls into `calls` and failed ones into `errors` (families registered by the
    /// caller: the operator counts its own calls with it).
    pub fn into_families(
        calls: Family<AwsLabels, Counter>,
        errors: Family<AwsErrorLabels, Counter>,
    ) -> Self {
        Self { calls, errors }
    }

    /// Counts one call made without the SDK (our own GetRecords): `status` is the HTTP
    /// status, `none` when no answer came; anything but `200` counts as an error too.
    pub fn count(&self, service: &str, api: &str, status: &str) {
        let labels = AwsLabels {
            service: service.to_string(),
            api: api.to_string(),
        };
        self.calls.get_or_create(&labels).inc();
        if status != "200" {
            self.errors
                .get_or_create(&AwsErrorLabels {
                    service: labels.service,
                    api: labels.api,
                    status: status.to_string(),
                })
                .inc();
        }
    }
}

impl Intercept for AwsCallCounter {
    fn name(&self) -> &'static str {
        "kinesis-worker-metrics"
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let (service, api) = cfg
            .load::<Metadata>()
            .map(|m| (m.service().to_ascii_lowercase(), m.name().to_string()))
            .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
        self.calls
            .get_or_create(&AwsLabels {
                service: service.clone(),
                api: api.clone(),
            })
            .inc();
        if let Some(Err(_)) = context.output_or_error() {
            let status = context
                .response()
                .map_or_else(|| "none".to_string(), |r| r.status().as_u16().to_string());
            self.errors
                .get_or_create(&AwsErrorLabels {
                    service,
                    api,
                    status,
                })
                .inc();
        }
        Ok(())
    }
}
