//! A model folder loaded on a provider, ready to generate: the entry point of the runtime
//! for the CLI, the C ABI and the benchmarks.

use std::path::Path;
use std::time::Duration;

use crate::backend::BackendOptions;
use crate::error::Result;
use crate::manifest::Manifest;
use crate::model::Model;
use crate::provider::{resolve_for, ProviderChoice, Resolved};
use crate::sampler::{scale_loop, Output, Progress, Request};

/// How to load a pipeline.
#[derive(Debug, Clone, Default)]
pub struct PipelineOptions {
    pub provider: ProviderChoice,
    pub backend: BackendOptions,
}

pub struct Pipeline {
    model: Model,
    resolved: Resolved,
}

impl Pipeline {
    /// Loads `dir` on the provider `options` ask for (see [`ProviderChoice`]).
    pub fn load(dir: &Path, options: &PipelineOptions) -> Result<Pipeline> {
        let manifest = Manifest::load(dir)?;
        let resolved = resolve_for(options.provider, &options.backend, &manifest)?;
        let model = Model::load_from(dir, manifest, resolved.provider, &options.backend)?;
        Ok(Pipeline { model, resolved })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.model.manifest
    }

    /// The provider that runs the graphs and why it was chosen.
    pub fn provider(&self) -> &Resolved {
        &self.resolved
    }

    pub fn model_mut(&mut self) -> &mut Model {
        &mut self.model
    }

    pub fn load_time(&self) -> Duration {
        self.model.load_time
    }

    /// A request with this model's sampler defaults (see [`Request::with_defaults`]).
    pub fn request(&self) -> Request {
        Request::with_defaults(&self.model.manifest)
    }

    /// Checks a request against the model before any work starts.
    pub fn validate(&self, req: &Request) -> Result<()> {
        req.validate(&self.model.manifest, self.model.batch_limit())
    }

    /// Runs the whole scale loop for one batch. `progress` is called after every solver step.
    pub fn generate(
        &mut self,
        req: &Request,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<Output> {
        self.validate(req)?;
        scale_loop::run(&mut self.model, req, progress)
    }
}
