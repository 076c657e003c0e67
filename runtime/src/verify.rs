//! Parity against reference tensors laid out like the fixtures' `expected.safetensors`:
//! `flow.s*`, `ar.*` (through one KV cache), `vae.*`, `pipe.*`, and the editing fixtures'
//! `enc.*` (the VAE encoder and the per-scale source tokens) and `edit.{case}.*`
//! (in-painting, out-painting and variations from recorded noise).

use std::path::Path;

use crate::backend::Resident;
use crate::error::{Error, Result};
use crate::image::{to_rgb8, RgbImage};
use crate::model::{KvCache, Model};
use crate::pipeline::Pipeline;
use crate::sampler::upsample::next_scale_tokens;
use crate::sampler::{EditPlan, Mask, Request, Solver};
use crate::tensor::Tensor;

/// Bounds per kind of case. Defaults follow the fixture README.
#[derive(Debug, Clone)]
pub struct Tolerances {
    /// Flow head, AR and upsampling outputs (max abs).
    pub graph: f32,
    /// VAE float image (max abs).
    pub vae: f32,
    /// Largest allowed u8 difference for the VAE case.
    pub vae_u8_levels: u8,
    /// Final pipeline tokens (max abs).
    pub pipe_tokens: f32,
    /// Pipeline u8 images: share of identical pixels and largest difference.
    pub pipe_identical: f64,
    pub pipe_u8_levels: u8,
    /// Whether `pipe.*` cases are run at all (see `VerifyBounds::pipeline`).
    pub pipeline: bool,
    /// The encoder's tokens and the per-scale source tokens (max abs). 2e-4, not the
    /// graphs' 1e-4: the reference's float32 encoder is itself 1.1e-4 from a float64
    /// evaluation of the same network on `edit-kl16` (this runtime's: 3.4e-6), and a
    /// bound below the reference's own error would fail the more exact implementation.
    pub encoder: f32,
    /// `edit.{case}.tokens` bound per case (4x the case's float64 drift, at least 1e-3);
    /// a case not named here is held to `pipe_tokens`.
    pub edit_tokens: std::collections::BTreeMap<String, f32>,
    /// Edited u8 images: share of identical values and largest difference.
    pub edit_identical: f64,
    pub edit_u8_levels: u8,
}

/// The edit cases the fixtures record, and how each is asked for.
pub const EDIT_CASES: [&str; 3] = ["inpaint", "outpaint", "variation"];

impl Default for Tolerances {
    fn default() -> Self {
        let b = crate::manifest::VerifyBounds::default();
        Tolerances {
            graph: b.graph,
            vae: b.vae,
            vae_u8_levels: b.vae_u8_levels(),
            pipe_tokens: 1e-3,
            pipe_identical: 0.99,
            pipe_u8_levels: 2,
            pipeline: true,
            encoder: 2e-4,
            edit_tokens: Default::default(),
            edit_identical: 0.998,
            edit_u8_levels: 1,
        }
    }
}

/// Pipeline settings the reference file was made with.
#[derive(Debug, Clone)]
pub struct PipeSettings {
    pub cfg: f64,
    pub guidance: f64,
    pub steps: usize,
    /// The class labels of the pipe case, for references that do not record them as
    /// `ar.labels` (the fixtures without AR cases keep them in config.json's `labels`).
    pub labels: Vec<usize>,
    /// Scales the `variation` edit case keeps whole (config.json's `keep_scales`).
    pub keep_scales: Option<usize>,
}

/// One compared tensor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseResult {
    pub name: String,
    pub max_abs: f64,
    pub max_rel: f64,
    pub bound: f64,
    /// For u8 comparisons, the share of identical values.
    pub identical: Option<f64>,
    pub pass: bool,
}

pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn load(path: &Path) -> Result<Reference> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            Error::BadArgument(format!(
                "{}: not a safetensors reference file: {e}",
                path.display()
            ))
        })?;
        Ok(Reference { bytes })
    }
    fn st(&self) -> safetensors::SafeTensors<'_> {
        safetensors::SafeTensors::deserialize(&self.bytes).expect("validated in load")
    }
    pub fn has(&self, key: &str) -> bool {
        self.st().tensor(key).is_ok()
    }
    pub fn f32(&self, key: &str) -> Result<Tensor> {
        let t = self
            .st()
            .tensor(key)
            .map_err(|_| Error::BadArgument(format!("reference has no tensor `{key}`")))?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(Error::BadArgument(format!(
                "reference tensor `{key}` is {:?}, expected F32",
                t.dtype()
            )));
        }
        let data = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Tensor::f32(t.shape().to_vec(), data))
    }
    pub fn u8(&self, key: &str) -> Result<(Vec<usize>, Vec<u8>)> {
        let t = self
            .st()
            .tensor(key)
            .map_err(|_| Error::BadArgument(format!("reference has no tensor `{key}`")))?;
        Ok((t.shape().to_vec(), t.data().to_vec()))
    }
    pub fn i64(&self, key: &str) -> Result<Vec<i64>> {
        let t = self
            .st()
            .tensor(key)
            .map_err(|_| Error::BadArgument(format!("reference has no tensor `{key}`")))?;
        Ok(t.data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }
}

/// Refuses a reference tensor whose shape does not fit this model (instead of indexing
/// past its end or handing the backend a shape error that names no reference case).
fn expect_shape(key: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.shape != want {
        return Err(Error::BadArgument(format!(
            "reference tensor `{key}` has shape {:?}; this model needs {want:?}",
            t.shape
        )));
    }
    Ok(())
}

/// Max abs and max relative error of `got` against `want`.
pub fn compare(name: &str, got: &[f32], want: &Tensor, bound: f32) -> Result<CaseResult> {
    let w = want.as_f32().expect("f32 reference");
    if got.len() != w.len() {
        return Err(Error::Model {
            path: name.into(),
            reason: format!(
                "produced {} values, the reference has {} (shape {:?})",
                got.len(),
                w.len(),
                want.shape
            ),
        });
    }
    let (mut max_abs, mut max_rel) = (0f64, 0f64);
    // Both sides: `f64::max` drops NaN, so a NaN in either (a broken reference file
    // included) would otherwise read as no difference at all.
    let (mut finite, mut nan) = (true, false);
    for (a, b) in got.iter().zip(w) {
        finite &= a.is_finite() && b.is_finite();
        let d = (*a as f64 - *b as f64).abs();
        nan |= d.is_nan();
        max_abs = max_abs.max(d);
        max_rel = max_rel.max(d / (b.abs() as f64).max(1e-3));
    }
    if nan {
        (max_abs, max_rel) = (f64::NAN, f64::NAN);
    }
    let pass = finite && max_abs <= bound as f64;
    Ok(CaseResult {
        name: name.into(),
        max_abs,
        max_rel,
        bound: bound as f64,
        identical: None,
        pass,
    })
}

fn compare_u8(name: &str, got: &[u8], want: &[u8], levels: u8, identical_min: f64) -> CaseResult {
    let mut max = 0u8;
    let mut same = 0usize;
    for (a, b) in got.iter().zip(want) {
        let d = a.abs_diff(*b);
        max = max.max(d);
        same += (d == 0) as usize;
    }
    let identical = same as f64 / want.len().max(1) as f64;
    let pass = got.len() == want.len() && max <= levels && identical >= identical_min;
    CaseResult {
        name: name.into(),
        max_abs: max as f64,
        max_rel: 0.0,
        bound: levels as f64,
        identical: Some(identical),
        pass,
    }
}

fn rgb_flat(images: &[crate::image::RgbImage]) -> Vec<u8> {
    images
        .iter()
        .flat_map(|i| i.pixels.iter().copied())
        .collect()
}

/// Runs every case present in `reference` on `pipe`'s model.
pub fn run(
    pipe: &mut Pipeline,
    reference: &Reference,
    tol: &Tolerances,
    settings: Option<&PipeSettings>,
) -> Result<Vec<CaseResult>> {
    let mut results = Vec::new();
    let model: &mut Model = pipe.model_mut();
    let m = model.manifest.clone();
    // Flow head at each scale size.
    for (i, &side) in m.scales.iter().enumerate() {
        let key = format!("flow.s{i}");
        if !reference.has(&format!("{key}.v")) {
            continue;
        }
        let x = reference.f32(&format!("{key}.x"))?;
        if x.shape.get(1) != Some(&(side * side)) {
            return Err(Error::BadArgument(format!(
                "`{key}.x` has shape {:?}; this model's scale {i} has {} tokens",
                x.shape,
                side * side
            )));
        }
        let n = side * side;
        let rows = x.shape.first().copied().unwrap_or(0);
        expect_shape(&format!("{key}.x"), &x, &[rows, n, m.latent_channels])?;
        let t = reference.f32(&format!("{key}.t"))?;
        expect_shape(&format!("{key}.t"), &t, &[rows])?;
        let cond = reference.f32(&format!("{key}.cond"))?;
        expect_shape(
            &format!("{key}.cond"),
            &cond,
            &[rows, n, m.architecture.ar.width],
        )?;
        let v = model
            .flow(
                i,
                &Resident::Host(x),
                &Resident::Host(t),
                &Resident::Host(cond),
            )?
            .to_host()?;
        results.push(compare(
            &format!("{key}.v"),
            v.as_f32().expect("f32"),
            &reference.f32(&format!("{key}.v"))?,
            tol.graph,
        )?);
    }
    // AR through one cache, and the upsampling between scales.
    if reference.has("ar.labels") {
        let labels = reference.i64("ar.labels")?;
        let b = labels.len();
        let x0 = reference.f32("ar.s0.x")?;
        let rows = x0.shape.first().copied().unwrap_or(0);
        if rows != b && rows != 2 * b {
            return Err(Error::BadArgument(format!(
                "reference tensor `ar.s0.x` has shape {:?}; expected {b} or {} rows for {b} labels",
                x0.shape,
                2 * b
            )));
        }
        let mut all = labels.clone();
        if rows == 2 * b {
            all.extend(std::iter::repeat_n(m.null_class as i64, b));
        }
        let mut cache = KvCache::empty(&m, rows);
        let c = m.latent_channels;
        for (i, &side) in m.scales.iter().enumerate() {
            let tokens = if i == 0 {
                Tensor::f32(vec![rows, 1, c], vec![0.0; rows * c])
            } else {
                let prev = reference.f32(&format!("ar.s{i}.prev_tokens"))?;
                let n_prev = m.scales[i - 1] * m.scales[i - 1];
                expect_shape(&format!("ar.s{i}.prev_tokens"), &prev, &[rows, n_prev, c])?;
                let up = next_scale_tokens(
                    prev.as_f32().expect("f32"),
                    rows,
                    c,
                    m.scales[i - 1],
                    m.final_grid(),
                    side,
                );
                let want = reference.f32(&format!("ar.s{i}.upsampled"))?;
                expect_shape(
                    &format!("ar.s{i}.upsampled"),
                    &want,
                    &[rows, side * side, c],
                )?;
                results.push(compare(
                    &format!("ar.s{i}.upsampled"),
                    &up,
                    &want,
                    tol.graph,
                )?);
                // Feed the reference's own upsampled tokens so each case isolates one graph.
                want
            };
            let z = model
                .ar_step(i, &all, &Resident::Host(tokens), &mut cache)?
                .to_host()?;
            results.push(compare(
                &format!("ar.s{i}.z"),
                z.as_f32().expect("f32"),
                &reference.f32(&format!("ar.s{i}.z"))?,
                tol.graph,
            )?);
        }
    }
    // VAE decode.
    if reference.has("vae.tokens") {
        let tokens = reference.f32("vae.tokens")?;
        let b = tokens.shape.first().copied().unwrap_or(0);
        let g = m.final_grid();
        expect_shape("vae.tokens", &tokens, &[b, m.latent_channels, g, g])?;
        let img = model.decode(&tokens)?;
        let (h, w) = match img.shape[..] {
            [_, 3, h, w] => (h, w),
            _ => {
                return Err(Error::Model {
                    path: model.dir.join(&m.graphs.vae_decoder.file),
                    reason: format!(
                        "decoded image has shape {:?}, expected [batch, 3, H, W]",
                        img.shape
                    ),
                })
            }
        };
        results.push(compare(
            "vae.image",
            img.as_f32().expect("f32"),
            &reference.f32("vae.image")?,
            tol.vae,
        )?);
        let (_, want) = reference.u8("vae.image_u8")?;
        let got = rgb_flat(&crate::image::to_rgb8(img.as_f32().expect("f32"), b, h, w));
        results.push(compare_u8(
            "vae.image_u8",
            &got,
            &want,
            tol.vae_u8_levels,
            0.0,
        ));
    }
    // Full pipeline from recorded noise.
    if tol.pipeline && reference.has("pipe.tokens") {
        let s = settings.ok_or_else(|| {
            Error::BadArgument("the reference has pipe.* cases: give --cfg, --guidance and --steps (or a config.json beside it)".into())
        })?;
        let labels: Vec<usize> = if reference.has("ar.labels") {
            reference
                .i64("ar.labels")?
                .iter()
                .map(|&l| l as usize)
                .collect()
        } else if !s.labels.is_empty() {
            s.labels.clone()
        } else {
            return Err(Error::BadArgument(
                "the reference has pipe.* cases but no ar.labels: give their labels (config.json's `labels` beside it)".into(),
            ));
        };
        let noise: Vec<Vec<f32>> = (0..m.scales.len())
            .map(|i| {
                reference
                    .f32(&format!("pipe.noise.s{i}"))
                    .map(|t| t.into_f32().expect("f32"))
            })
            .collect::<Result<_>>()?;
        let req = Request::with_defaults(&m)
            .with_sampler(Some(s.cfg), Some(s.guidance), Some(s.steps))
            .with_images(labels, 0)?
            .with_solver(Solver::Euler)
            .with_noise(Some(noise));
        let out = pipe.generate(&req, &mut |_| true)?;
        results.push(compare(
            "pipe.tokens",
            &out.tokens,
            &reference.f32("pipe.tokens")?,
            tol.pipe_tokens,
        )?);
        let (_, want) = reference.u8("pipe.image_u8")?;
        results.push(compare_u8(
            "pipe.image_u8",
            &rgb_flat(&out.images),
            &want,
            tol.pipe_u8_levels,
            tol.pipe_identical,
        ));
    }
    if reference.has("enc.tokens") {
        results.extend(edit_cases(pipe, reference, tol, settings)?);
    }
    if results.is_empty() {
        return Err(Error::BadArgument(
            "the reference file holds no flow.*, ar.*, vae.*, pipe.*, enc.* or edit.* case".into(),
        ));
    }
    Ok(results)
}

/// `[B, H, W, 3]` u8 images from the reference.
fn reference_images(reference: &Reference, key: &str, size: usize) -> Result<Vec<RgbImage>> {
    let (shape, data) = reference.u8(key)?;
    match shape[..] {
        [b, h, w, 3] if h == size && w == size && data.len() == b * h * w * 3 => Ok(data
            .chunks_exact(h * w * 3)
            .map(|p| RgbImage {
                width: w,
                height: h,
                pixels: p.to_vec(),
            })
            .collect()),
        _ => Err(Error::BadArgument(format!(
            "reference tensor `{key}` has shape {shape:?}; this model needs [batch, {size}, {size}, 3] uint8"
        ))),
    }
}

/// The encoder (`enc.*`) and edit (`edit.{case}.*`) cases.
fn edit_cases(
    pipe: &mut Pipeline,
    reference: &Reference,
    tol: &Tolerances,
    settings: Option<&PipeSettings>,
) -> Result<Vec<CaseResult>> {
    let mut results = Vec::new();
    let m = pipe.manifest().clone();
    let (c, g, size) = (m.latent_channels, m.final_grid(), m.image_size);
    let images = reference_images(reference, "enc.image_u8", size)?;
    let b = images.len();
    let tokens = pipe.encode(&images)?;
    let want = reference.f32("enc.tokens")?;
    expect_shape("enc.tokens", &want, &[b, c, g, g])?;
    results.push(compare("enc.tokens", &tokens, &want, tol.encoder)?);
    // The per-scale source tokens, from this encoder's tokens.
    let whole = EditPlan::new(&tokens, b, c, g, &m.scales, &vec![None; b], m.scales.len())?;
    for (k, &side) in m.scales.iter().enumerate() {
        let key = format!("enc.scale.s{k}");
        if !reference.has(&key) {
            continue;
        }
        let want = reference.f32(&key)?;
        expect_shape(&key, &want, &[b, side * side, c])?;
        results.push(compare(&key, &whole.scale(k).tokens, &want, tol.encoder)?);
    }
    if reference.has("enc.recon_u8") {
        // The round trip's decode, of the reference's own tokens (isolates the decoder).
        let img = pipe.model_mut().decode(&want)?;
        let (h, w) = (img.shape[2], img.shape[3]);
        let got = rgb_flat(&to_rgb8(img.as_f32().expect("f32"), b, h, w));
        let (_, want_u8) = reference.u8("enc.recon_u8")?;
        results.push(compare_u8(
            "enc.recon_u8",
            &got,
            &want_u8,
            tol.vae_u8_levels,
            0.0,
        ));
    }
    // The edit cases start from the reference's own encoder tokens, so each case isolates
    // the sampler (as the AR cases feed the reference's upsampled tokens): the reference's
    // float32 encoder is itself up to 1.1e-4 from a float64 evaluation of the same
    // network (edit-kl16), which its sampler then amplifies past the edit bounds.
    let tokens = want.into_f32().expect("f32");
    let cases: Vec<&str> = EDIT_CASES
        .into_iter()
        .filter(|case| reference.has(&format!("edit.{case}.tokens")))
        .collect();
    // Like `pipe.*`: end to end only where the manifest says its graphs are compared so
    // (float32); reduced-precision folders keep the encoder's cases above.
    if cases.is_empty() || !tol.pipeline {
        return Ok(results);
    }
    let s = settings.ok_or_else(|| {
        Error::BadArgument("the reference has edit.* cases: give --cfg, --guidance and --steps (or a config.json beside it)".into())
    })?;
    if s.labels.len() != b {
        return Err(Error::BadArgument(format!(
            "the reference's edit.* cases need {b} labels (config.json's `labels`), got {:?}",
            s.labels
        )));
    }
    let (mshape, mdata) = reference.u8("edit.mask_u8")?;
    if mshape != [b, size, size] {
        return Err(Error::BadArgument(format!(
            "reference tensor `edit.mask_u8` has shape {mshape:?}; this model needs [{b}, {size}, {size}] uint8"
        )));
    }
    let masks: Vec<Mask> = mdata
        .chunks_exact(size * size)
        .map(|v| Mask {
            size,
            values: v.to_vec(),
        })
        .collect();
    for case in cases {
        let (case_masks, keep): (Vec<Option<Mask>>, usize) = match case {
            "inpaint" => (masks.iter().cloned().map(Some).collect(), 0),
            "outpaint" => (masks.iter().map(|mk| Some(mk.inverted())).collect(), 0),
            _ => (
                vec![None; b],
                s.keep_scales.ok_or_else(|| {
                    Error::BadArgument(
                        "the reference has an edit.variation case: give its keep_scales (config.json's `keep_scales`)"
                            .into(),
                    )
                })?,
            ),
        };
        let plan = EditPlan::new(&tokens, b, c, g, &m.scales, &case_masks, keep)?;
        for (k, &side) in m.scales.iter().enumerate() {
            let key = format!("edit.{case}.known.s{k}");
            if !reference.has(&key) {
                continue;
            }
            let (shape, want) = reference.u8(&key)?;
            if shape != [b, side * side] {
                return Err(Error::BadArgument(format!(
                    "reference tensor `{key}` has shape {shape:?}; expected [{b}, {}]",
                    side * side
                )));
            }
            let got: Vec<u8> = plan.scale(k).known.iter().map(|&k| k as u8).collect();
            results.push(compare_u8(&key, &got, &want, 0, 1.0));
        }
        let rows = if s.cfg > 1.0 { 2 * b } else { b };
        let noise: Vec<Vec<f32>> = m
            .scales
            .iter()
            .enumerate()
            .map(|(k, &side)| {
                let key = format!("edit.{case}.noise.s{k}");
                let t = reference.f32(&key)?;
                expect_shape(&key, &t, &[rows, side * side, c])?;
                Ok(t.into_f32().expect("f32"))
            })
            .collect::<Result<_>>()?;
        let req = Request::with_defaults(&m)
            .with_sampler(Some(s.cfg), Some(s.guidance), Some(s.steps))
            .with_images(s.labels.clone(), 0)?
            .with_solver(Solver::Euler)
            .with_noise(Some(noise))
            .with_edit(Some(plan));
        let out = pipe.generate(&req, &mut |_| true)?;
        let bound = tol
            .edit_tokens
            .get(case)
            .copied()
            .unwrap_or(tol.pipe_tokens);
        results.push(compare(
            &format!("edit.{case}.tokens"),
            &out.tokens,
            &reference.f32(&format!("edit.{case}.tokens"))?,
            bound,
        )?);
        // The rule's invariant: at the last scale, known cells are the encoder's tokens.
        let last = req
            .edit
            .as_deref()
            .expect("set above")
            .scale(m.scales.len() - 1);
        let nn = g * g;
        let (mut got, mut want) = (Vec::new(), Vec::new());
        for bi in 0..b {
            for p in (0..nn).filter(|&p| last.known[bi * nn + p]) {
                for ch in 0..c {
                    let i = (bi * c + ch) * nn + p;
                    got.push(out.tokens[i]);
                    want.push(tokens[i]);
                }
            }
        }
        let want = Tensor::f32(vec![want.len()], want);
        results.push(compare(
            &format!("edit.{case}.known_cells"),
            &got,
            &want,
            0.0,
        )?);
        let (_, want_u8) = reference.u8(&format!("edit.{case}.image_u8"))?;
        results.push(compare_u8(
            &format!("edit.{case}.image_u8"),
            &rgb_flat(&out.images),
            &want_u8,
            tol.edit_u8_levels,
            tol.edit_identical,
        ));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(got: &[f32], want: &[f32]) -> CaseResult {
        let want = Tensor::f32(vec![want.len()], want.to_vec());
        compare("case", got, &want, 1e-4).unwrap()
    }

    #[test]
    fn equal_values_pass_and_a_difference_past_the_bound_fails() {
        assert!(case(&[1.0, -2.0], &[1.0, -2.0]).pass);
        let r = case(&[1.0, -2.0], &[1.0, -2.001]);
        assert!(!r.pass && r.max_abs > 1e-4, "{r:?}");
    }

    /// A failing case, reported as NaN rather than as the largest finite difference.
    fn fails_as_nan(got: &[f32], want: &[f32]) {
        let r = case(got, want);
        assert!(!r.pass, "{got:?} vs {want:?} passed: {r:?}");
        assert!(r.max_abs.is_nan(), "{got:?} vs {want:?}: {r:?}");
    }

    #[test]
    fn a_nan_in_the_produced_values_fails() {
        fails_as_nan(&[1.0, f32::NAN], &[1.0, 2.0]);
        fails_as_nan(&[f32::NAN; 2], &[1.0, 2.0]);
    }

    /// A broken reference file must not pass everything compared against it.
    #[test]
    fn a_nan_in_the_reference_fails() {
        fails_as_nan(&[1.0, 2.0], &[1.0, f32::NAN]);
        fails_as_nan(&[f32::NAN; 2], &[f32::NAN; 2]);
    }

    #[test]
    fn an_infinity_on_either_side_fails() {
        let inf = f32::INFINITY;
        let cases: [(&[f32], &[f32]); 3] = [
            (&[inf, 0.0], &[inf, 0.0]),
            (&[0.0], &[-inf]),
            (&[inf], &[0.0]),
        ];
        for (got, want) in cases {
            let r = case(got, want);
            assert!(!r.pass, "{got:?} vs {want:?}: {r:?}");
        }
    }
}
