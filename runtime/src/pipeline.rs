//! A model folder loaded on a provider, ready to generate: the entry point of the runtime
//! for the CLI, the C ABI and the benchmarks.

use std::path::Path;
use std::time::Duration;

use crate::backend::BackendOptions;
use crate::error::Error;
use crate::error::Result;
use crate::image::RgbImage;
use crate::manifest::Manifest;
use crate::model::Model;
use crate::provider::{resolve_for, ProviderChoice, Resolved};
use crate::sampler::{scale_loop, EditPlan, Mask, Output, Progress, Request};

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

    /// Encodes source images (each the model's size, see [`crate::edit_input`]) to the
    /// sampler's tokens `[n, C, G, G]`. Stops on NaN or infinite tokens.
    pub fn encode(&mut self, images: &[RgbImage]) -> Result<Vec<f32>> {
        let size = self.model.manifest.image_size;
        if let Some((i, img)) = images
            .iter()
            .enumerate()
            .find(|(_, im)| (im.width, im.height) != (size, size))
        {
            return Err(Error::BadArgument(format!(
                "source image {i} is {}x{}; this model edits {size}x{size} images (fit it \
                 first: flowar_runtime::edit_input::source_from_png does)",
                img.width, img.height
            )));
        }
        let input = crate::edit_input::encoder_input(images)?;
        let out = self.model.encode(&input)?;
        let tokens = out.into_f32().ok_or_else(|| Error::Model {
            path: self.model.dir.clone(),
            reason: "the VAE encoder's `tokens` are not float32".into(),
        })?;
        let bad = tokens.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(Error::Model {
                path: self.model.dir.join(flowar_format::io::vae_encoder::FILE),
                reason: format!(
                    "the VAE encoder produced {bad} NaN or infinite token elements ({} \
                     folder); the encoder computes in float32, so its weights are damaged: \
                     convert again",
                    self.model.manifest.dtype
                ),
            });
        }
        Ok(tokens)
    }

    /// The edit plan for a batch whose row `r` edits `images[rows[r]]` under
    /// `masks[rows[r]]` (`None`: no mask), scales `0..keep_scales` known whole. Each image
    /// is encoded once, however many rows edit it.
    pub fn edit_plan(
        &mut self,
        images: &[RgbImage],
        masks: &[Option<Mask>],
        keep_scales: usize,
        rows: &[usize],
    ) -> Result<EditPlan> {
        if masks.len() != images.len() {
            return Err(Error::BadArgument(format!(
                "{} masks for {} images (give one per image, or None)",
                masks.len(),
                images.len()
            )));
        }
        let tokens = self.encode(images)?;
        EditPlan::for_rows(&tokens, masks, keep_scales, rows, &self.model.manifest)
    }

    /// Edits image `i` with class `req.classes[i]`: regenerates what `masks[i]` marks
    /// (`None`: everything from scale `keep_scales` on) and keeps the rest of the source.
    pub fn edit(
        &mut self,
        req: &Request,
        images: &[RgbImage],
        masks: &[Option<Mask>],
        keep_scales: usize,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<Output> {
        if images.len() != req.classes.len() {
            return Err(Error::BadArgument(format!(
                "{} source images for {} classes (one class per image)",
                images.len(),
                req.classes.len()
            )));
        }
        let rows: Vec<usize> = (0..images.len()).collect();
        let plan = self.edit_plan(images, masks, keep_scales, &rows)?;
        let req = req.clone().with_edit(Some(plan));
        self.generate(&req, progress)
    }
}
