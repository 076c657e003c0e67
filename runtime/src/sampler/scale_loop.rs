//! The coarse-to-fine loop (`docs/flowar-reference.md`, section 6): per scale the AR condition, that
//! scale's ODE from noise to tokens, and the upsampling that starts the next scale; then
//! the VAE decode of the last scale's tokens.

use std::time::Instant;

use crate::backend::Resident;
use crate::error::{Error, Result};
use crate::image::{to_rgb8, RgbImage};
use crate::model::{KvCache, Model};
use crate::tensor::Tensor;

use super::ode::ScaleOde;
use super::schedule::{cfg_at_scale, time_grid};
use super::upsample::next_scale_tokens;
use super::{noise, Progress, Request, StageTimes};

/// Generated images and what produced them.
pub struct Output {
    pub images: Vec<RgbImage>,
    /// Final latents `[batch, C, G, G]`.
    pub tokens: Vec<f32>,
    /// Each scale's tokens as its ODE ended, coarse to fine, `[batch, N_i, C]` (the
    /// conditional rows): where two configurations part ways (`flowar compare`).
    pub scale_tokens: Vec<Vec<f32>>,
    /// Decoded images `[batch, 3, H, W]` before quantisation.
    pub image: Vec<f32>,
    pub times: StageTimes,
}

/// The float64 solver state, read back to the host.
fn host_f64(model: &Model, x: &Resident) -> Result<Vec<f64>> {
    x.to_host()?.into_f64().ok_or_else(|| Error::Model {
        path: model.dir.clone(),
        reason: "the solver step's `x_next` is not float64".into(),
    })
}

/// Runs the whole scale loop for one validated request. `progress` is called after every
/// solver step; returning `false` stops with [`Error::Cancelled`].
pub fn run(
    model: &mut Model,
    req: &Request,
    progress: &mut dyn FnMut(&Progress) -> bool,
) -> Result<Output> {
    let m = model.manifest.clone();
    let b = req.classes.len();
    let cfg_on = req.cfg > 1.0;
    let rows = req.rows();
    let c = m.latent_channels;
    let n_scales = m.scales.len();
    let grid = m.final_grid();
    let noise = match &req.noise {
        Some(n) => n.clone(),
        None => noise::seeded(req.seed, &req.image_indices, &m.scales, c, cfg_on),
    };
    let mut labels: Vec<i64> = req.classes.iter().map(|&c| c as i64).collect();
    if cfg_on {
        labels.extend(std::iter::repeat_n(m.null_class as i64, b));
    }
    let mut st = StageTimes::default();
    let mut cache = KvCache::empty(&m, rows);
    let mut tokens_in = Resident::Host(Tensor::f32(vec![rows, 1, c], vec![0.0; rows * c]));
    let mut cond = Vec::new();
    let mut scale_tokens = Vec::with_capacity(m.scales.len());

    for (i, &side) in m.scales.iter().enumerate() {
        let n = side * side;
        let t0 = Instant::now();
        let z = model.ar_step(i, &labels, &tokens_in, &mut cache)?;
        // A NaN in the condition is reported here, where it appears: tract's SIMD kernels
        // (min/max in GELU and friends) can turn NaN inputs into finite outputs inside the
        // flow head, so the velocity check alone would let it pass on tract.
        let bad = z.count_nonfinite()?;
        if bad > 0 {
            return Err(Error::NonFinite {
                scale: i,
                step: 0,
                what: format!("{bad} AR condition elements"),
            });
        }
        let ar_time = t0.elapsed();
        st.ar += ar_time;
        st.ar_per_scale.push(ar_time);
        let times = time_grid(req.steps_at(i));
        let n_steps = times.len() - 1;
        let w = cfg_at_scale(req.cfg, i, n_scales);
        let mut ode = ScaleOde::new(i, b, cfg_on, w, req.guidance, &z);
        let edit = req.edit.as_deref();
        let known = edit.map(|e| e.scale(i));
        let x: Vec<f64> = match known {
            // Nothing to regenerate at this scale: its tokens are the source's (what the
            // forced path reaches at t = 0), and the flow head has no work. The AR step
            // above still ran: the KV cache needs this scale.
            Some(k) if k.all_known() => {
                for step in 0..n_steps {
                    let p = Progress {
                        scale: i,
                        scales: n_scales,
                        step: step + 1,
                        steps: n_steps,
                    };
                    if !progress(&p) {
                        return Err(Error::Cancelled);
                    }
                }
                k.tokens.iter().map(|&v| v as f64).collect()
            }
            _ => {
                let mut state = ode.initial_state(model, &noise[i], n, c)?;
                for step in 0..n_steps {
                    let span = (times[step], times[step + 1]);
                    state = ode.step(model, state, req.solver, span, step, &mut st)?;
                    if let Some(plan) = edit.filter(|_| known.is_some_and(|k| k.any_known())) {
                        // Known tokens back on the straight path to the source's.
                        let t1 = Instant::now();
                        let mut x = host_f64(model, &state.x)?;
                        plan.force(i, &mut x, &noise[i], span.1);
                        state = ode.state_from_host(model, x, n, c)?;
                        st.solver += t1.elapsed();
                    }
                    if !progress(&Progress {
                        scale: i,
                        scales: n_scales,
                        step: step + 1,
                        steps: n_steps,
                    }) {
                        return Err(Error::Cancelled);
                    }
                }
                // The one read back per scale: the tokens, for upsampling and the VAE.
                host_f64(model, &state.x)?
            }
        };
        let t2 = Instant::now();
        cond = x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        scale_tokens.push(cond[..b * n * c].to_vec());
        if i + 1 < n_scales {
            let next = m.scales[i + 1];
            let up = next_scale_tokens(&cond, b, c, side, grid, next);
            let mut data = up.clone();
            if cfg_on {
                data.extend_from_slice(&up);
            }
            tokens_in = model.upload(&Tensor::f32(vec![rows, next * next, c], data))?;
        }
        st.upsample += t2.elapsed();
    }

    // [b, N, C] tokens -> [b, C, G, G] latents.
    let nn = grid * grid;
    let mut latent = vec![0f32; b * c * nn];
    for bi in 0..b {
        for p in 0..nn {
            for ch in 0..c {
                latent[(bi * c + ch) * nn + p] = cond[(bi * nn + p) * c + ch];
            }
        }
    }
    let t3 = Instant::now();
    let img = model.decode(&Tensor::f32(vec![b, c, grid, grid], latent.clone()))?;
    st.vae += t3.elapsed();
    let (h, wd) = (img.shape[2], img.shape[3]);
    let image = img.into_f32().ok_or_else(|| Error::Model {
        path: model.dir.clone(),
        reason: "the VAE decoder's `image` is not float32".into(),
    })?;
    let bad = image.iter().filter(|x| !x.is_finite()).count();
    if bad > 0 {
        // Nothing is written: the caller gets this error instead of images.
        return Err(Error::Model {
            path: model.dir.join(&m.graphs.vae_decoder.file),
            reason: format!(
                "the VAE decoder produced {bad} NaN or infinite pixel values (a {} folder); \
                 large VAEs overflow in float16 (why diffusers configs carry `force_upcast`): \
                 convert with `--dtype f32`, or check the VAE weights",
                m.dtype
            ),
        });
    }
    let images = to_rgb8(&image, b, h, wd);
    Ok(Output {
        images,
        tokens: latent,
        scale_tokens,
        image,
        times: st,
    })
}
