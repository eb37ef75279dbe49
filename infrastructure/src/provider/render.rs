//! The local provider's renderer: a pure function from a 32-byte seed and a size to PNG
//! bytes. A diagonal two-colour gradient, a soft light, a few translucent shapes and a
//! portrait silhouette, all placed and coloured by the seed. Same seed and size, same
//! bytes (the PNG encoder is deterministic too), on every machine: no floating-point
//! functions whose results vary by platform feed a pixel except `sin`/`cos` of the
//! gradient angle, which are rounded to thousandths first.

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};
use sha2::{Digest, Sha256};

/// Largest rendered side, in pixels: bounds the CPU and memory one render takes.
pub const SIDE_PIXELS_MAX: u32 = 2048;
/// Smallest rendered side, in pixels.
pub const SIDE_PIXELS_MIN: u32 = 16;
/// Rows of one band of the background (see `render_rgb`).
const BAND_ROWS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("image sides must be {SIDE_PIXELS_MIN} to {SIDE_PIXELS_MAX} pixels")]
    Size,
    #[error("PNG encoding failed")]
    Encode,
}

/// SHA-256 over length-prefixed fields, so `("ab", "c")` and `("a", "bc")` differ.
pub fn seed_of(fields: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for field in fields {
        hasher.update((field.len() as u64).to_le_bytes());
        hasher.update(field);
    }
    hasher.finalize().into()
}

/// Parses `"{width}x{height}"`, e.g. `"512x512"`, within the renderer's bounds.
pub fn parse_resolution(text: &str) -> Option<(u32, u32)> {
    let (w, h) = text.trim().split_once(['x', 'X'])?;
    let (w, h) = (w.parse::<u32>().ok()?, h.parse::<u32>().ok()?);
    let fits = |side: u32| (SIDE_PIXELS_MIN..=SIDE_PIXELS_MAX).contains(&side);
    (fits(w) && fits(h)).then_some((w, h))
}

/// SplitMix64: tiny, fast and fixed forever, unlike a library RNG whose stream may
/// change between versions (which would change every image).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn range(&mut self, low: f32, high: f32) -> f32 {
        low + (high - low) * self.unit()
    }
}

type Rgb = [f32; 3];

/// HSV (hue in turns) to RGB in `[0, 255]`.
fn hsv(hue: f32, saturation: f32, value: f32) -> Rgb {
    let h = (hue.rem_euclid(1.0)) * 6.0;
    let sector = h.floor();
    let f = h - sector;
    let (p, q, t) = (value * (1.0 - saturation), value * (1.0 - saturation * f), value * (1.0 - saturation * (1.0 - f)));
    let (r, g, b) = match sector as u32 {
        0 => (value, t, p),
        1 => (q, value, p),
        2 => (p, value, t),
        3 => (p, q, value),
        4 => (t, p, value),
        _ => (value, p, q),
    };
    [r * 255.0, g * 255.0, b * 255.0]
}

/// `over` on `under` with `alpha` in 256ths, in integers (exact and fast).
fn blend(under: &mut [u8], over: [u8; 3], alpha_256: u32) {
    for (channel, value) in under.iter_mut().zip(over) {
        *channel = ((u32::from(*channel) * (256 - alpha_256) + u32::from(value) * alpha_256 + 128) >> 8) as u8;
    }
}

/// A float in `[0, 255.5)` to the nearest byte (halves up); a value a rounding error
/// outside the range lands on 0 or 255, NaN on 0 — what `(value + 0.5) as u8` gives, in a
/// form the compiler vectorizes (a saturating `as u8` converts one float at a time).
fn to_byte(value: f32) -> u8 {
    let in_range = (value + 0.5).max(0.0).min(255.0);
    // SAFETY: `in_range` is finite and within [0, 255] (`max`/`min` return the other
    // operand for NaN), so its truncation fits a `u8`, as `to_int_unchecked` requires.
    unsafe { in_range.to_int_unchecked::<u8>() }
}

enum Shape {
    Circle { cx: f32, cy: f32, r: f32 },
    Ring { cx: f32, cy: f32, r: f32, width: f32 },
    Rect { x0: f32, y0: f32, x1: f32, y1: f32 },
}

/// The pixels `[from, to)` of a row whose centres lie within `[left, right]`, clipped.
fn span(left: f32, right: f32, width: u32) -> (usize, usize) {
    // Centre of pixel x is x + 0.5: x + 0.5 >= left  <=>  x >= left - 0.5.
    let from = (left - 0.5).ceil().max(0.0);
    let to = (right - 0.5).floor() + 1.0;
    let clip = |v: f32| (v.max(0.0) as usize).min(width as usize);
    (clip(from), clip(to))
}

impl Shape {
    /// The covered pixel runs (at most two) of the row whose centre is at `y`.
    fn spans(&self, y: f32, width: u32) -> [(usize, usize); 2] {
        let none = (0, 0);
        match *self {
            Shape::Circle { cx, cy, r } => {
                let rest = r * r - (y - cy) * (y - cy);
                if rest < 0.0 {
                    return [none, none];
                }
                let half = rest.sqrt();
                [span(cx - half, cx + half, width), none]
            }
            Shape::Ring { cx, cy, r, width: ring } => {
                let dy2 = (y - cy) * (y - cy);
                let rest = r * r - dy2;
                if rest < 0.0 {
                    return [none, none];
                }
                let (outer, inner_r) = (rest.sqrt(), (r - ring).max(0.0));
                let inner_rest = inner_r * inner_r - dy2;
                if inner_rest <= 0.0 {
                    return [span(cx - outer, cx + outer, width), none];
                }
                let inner = inner_rest.sqrt();
                let (left, right) = (span(cx - outer, cx + outer, width), span(cx - inner, cx + inner, width));
                // Cut the hole (the inner disc's run) out of the outer run.
                let hole = (right.0.max(left.0), right.1.min(left.1));
                if hole.0 >= hole.1 {
                    return [left, none];
                }
                [(left.0, hole.0), (hole.1, left.1)]
            }
            Shape::Rect { x0, y0, x1, y1 } => {
                if y < y0 || y > y1 {
                    return [none, none];
                }
                [span(x0, x1, width), none]
            }
        }
    }

    /// Rows `(y0, y1)` the shape may cover, exclusive end, clipped to the image.
    fn rows(&self, height: u32) -> (u32, u32) {
        let (y0, y1) = match *self {
            Shape::Circle { cy, r, .. } | Shape::Ring { cy, r, .. } => (cy - r, cy + r),
            Shape::Rect { y0, y1, .. } => (y0, y1),
        };
        let clip = |v: f32| (v.max(0.0) as u32).min(height);
        (clip(y0), clip(y1 + 1.0))
    }
}

/// Renders the image of `seed` at `width` × `height` as PNG bytes.
pub fn render_png(seed: &[u8; 32], width: u32, height: u32) -> Result<Vec<u8>, RenderError> {
    let fits = |side: u32| (SIDE_PIXELS_MIN..=SIDE_PIXELS_MAX).contains(&side);
    if !fits(width) || !fits(height) {
        return Err(RenderError::Size);
    }
    PIXELS.with_borrow_mut(|pixels| {
        render_rgb(seed, width, height, pixels);
        let mut png = Vec::with_capacity(pixels.len() / 4);
        // One filter for every row (`Up`: smooth gradients leave small, repeating residues)
        // instead of trying all five per row, and the fastest deflate: several times faster
        // than adaptive filtering, for files a little larger.
        let encoded = PngEncoder::new_with_quality(&mut png, CompressionType::Fast, FilterType::Up)
            .write_image(pixels, width, height, ExtendedColorType::Rgb8)
            .map_err(|_| RenderError::Encode);
        if pixels.capacity() > PIXELS_KEPT_MAX {
            *pixels = Vec::new();
        }
        encoded.map(|()| png)
    })
}

/// Pixel buffers kept between a thread's renders up to this size (a 1024×1024 image);
/// a larger one is let go after its render.
const PIXELS_KEPT_MAX: usize = 1024 * 1024 * 3;

thread_local! {
    /// The thread's pixel buffer, reused by its next render: a fresh one is zeroed by the
    /// allocator (and faulted in page by page) only to be painted over entirely.
    static PIXELS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Paints the image into `pixels` (RGB, row by row), resized to fit. Every byte is
/// painted (the background covers them all), so what the buffer held before is irrelevant.
fn render_rgb(seed: &[u8; 32], width: u32, height: u32, pixels: &mut Vec<u8>) {
    let mut words = seed.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
    let mut rng = SplitMix64(words.by_ref().fold(0, |acc, w| acc.rotate_left(17) ^ w));
    let (w, h) = (width as f32, height as f32);
    pixels.resize((width * height * 3) as usize, 0);

    // Background: a gradient between two hues along a seeded direction, lit by a soft
    // radial light. Per-column terms are computed once; a row adds its own.
    let hue = rng.unit();
    let from = hsv(hue, rng.range(0.35, 0.7), rng.range(0.55, 0.95));
    let shift = if rng.next() % 2 == 0 { rng.range(0.08, 0.42) } else { -rng.range(0.08, 0.42) };
    let to = hsv(hue + shift, rng.range(0.35, 0.8), rng.range(0.3, 0.8));
    let angle = rng.range(0.0, std::f32::consts::TAU);
    let (dx, dy) = (((angle.cos() * 1000.0).round() / 1000.0), ((angle.sin() * 1000.0).round() / 1000.0));
    let (light_x, light_y, light_r) = (rng.range(0.2, 0.8) * w, rng.range(0.1, 0.6) * h, rng.range(0.3, 0.7) * w.max(h));
    let inverse_r2 = 1.0 / (light_r * light_r);
    let delta = [to[0] - from[0], to[1] - from[1], to[2] - from[2]];
    let column_t: Vec<f32> = (0..width).map(|x| (x as f32 / w - 0.5) * dx).collect();
    let column_d2: Vec<f32> = (0..width).map(|x| (x as f32 - light_x) * (x as f32 - light_x) * inverse_r2).collect();
    // The background changes slowly from row to row (≈ half a level of a channel per
    // row at 512 pixels), so it is computed once per band of `BAND_ROWS` rows, at the
    // band's middle, and copied to the band's other rows: a quarter of the arithmetic,
    // and rows that repeat the one above, which the PNG `Up` filter turns into zeros that
    // deflate as runs (most of a render's time was compressing a per-row gradient).
    // A band's row is computed a plane at a time (straight loops over `f32`s and a byte
    // conversion the compiler vectorizes: see `to_byte`), then interleaved into RGB.
    let columns = width as usize;
    let (mut row_t_of, mut light_of) = (vec![0f32; columns], vec![0f32; columns]);
    let mut planes = [vec![0u8; columns], vec![0u8; columns], vec![0u8; columns]];
    for (index, band) in pixels.chunks_mut(columns * 3 * BAND_ROWS).enumerate() {
        // The last band may be shorter.
        let rows_here = band.len() / (columns * 3);
        let middle = (index * BAND_ROWS) as f32 + (rows_here as f32 - 1.0) / 2.0;
        let row_t = (middle / h - 0.5) * dy + 0.5;
        let row_d2 = (middle - light_y) * (middle - light_y) * inverse_r2;
        for (((t, light), column_t), column_d2) in row_t_of.iter_mut().zip(light_of.iter_mut()).zip(&column_t).zip(&column_d2) {
            *t = (column_t + row_t).clamp(0.0, 1.0);
            *light = (1.0 - (column_d2 + row_d2)).max(0.0) * 0.35;
        }
        for (c, plane) in planes.iter_mut().enumerate() {
            let (from, delta) = (from[c], delta[c]);
            for ((value, t), light) in plane.iter_mut().zip(&row_t_of).zip(&light_of) {
                let base = from + delta * t;
                *value = to_byte(base + (255.0 - base) * light);
            }
        }
        let (first, rest) = band.split_at_mut(columns * 3);
        let [red, green, blue] = &planes;
        for (((pixel, r), g), b) in first.chunks_exact_mut(3).zip(red).zip(green).zip(blue) {
            pixel.copy_from_slice(&[*r, *g, *b]);
        }
        for row in rest.chunks_exact_mut(columns * 3) {
            row.copy_from_slice(first);
        }
    }

    // A few translucent shapes in colours near the palette.
    let shape_count = 3 + (rng.next() % 5) as usize;
    for _ in 0..shape_count {
        let (cx, cy, r) = (rng.unit() * w, rng.unit() * h, rng.range(0.05, 0.3) * w.min(h));
        let shape = match rng.next() % 3 {
            0 => Shape::Circle { cx, cy, r },
            1 => Shape::Ring { cx, cy, r, width: r * rng.range(0.1, 0.35) },
            _ => Shape::Rect { x0: cx - r, y0: cy - r * rng.range(0.3, 1.0), x1: cx + r * rng.range(0.3, 1.5), y1: cy + r },
        };
        let colour = hsv(hue + rng.range(0.3, 0.7), rng.range(0.3, 0.9), rng.range(0.5, 1.0));
        fill(pixels, width, height, &shape, colour, rng.range(0.25, 0.7));
    }

    // A portrait silhouette: shoulders and a head, darker than the background.
    let centre = rng.range(0.35, 0.65) * w;
    let head_r = rng.range(0.09, 0.14) * w.min(h);
    let shadow = hsv(hue + 0.5, rng.range(0.2, 0.5), rng.range(0.12, 0.3));
    let shoulders = Shape::Circle { cx: centre, cy: h + head_r * 1.2, r: head_r * 3.2 };
    let head = Shape::Circle { cx: centre, cy: h - head_r * 3.4, r: head_r };
    fill(pixels, width, height, &shoulders, shadow, 0.85);
    fill(pixels, width, height, &head, shadow, 0.85);
}

/// Blends `colour` at `alpha` over the pixels `shape` covers, a row's run at a time.
fn fill(pixels: &mut [u8], width: u32, height: u32, shape: &Shape, colour: Rgb, alpha: f32) {
    let over = [to_byte(colour[0]), to_byte(colour[1]), to_byte(colour[2])];
    let alpha_256 = (alpha.clamp(0.0, 1.0) * 256.0 + 0.5) as u32;
    let (y0, y1) = shape.rows(height);
    let stride = width as usize * 3;
    for y in y0..y1 {
        let row = &mut pixels[y as usize * stride..(y as usize + 1) * stride];
        for (from, to) in shape.spans(y as f32 + 0.5, width) {
            if from < to {
                for pixel in row[from * 3..to * 3].chunks_exact_mut(3) {
                    blend(pixel, over, alpha_256);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolutions_parse_within_bounds() {
        #[track_caller]
        fn check(text: &str, expected: Option<(u32, u32)>) {
            assert_eq!(parse_resolution(text), expected, "{text:?}");
        }
        check("512x512", Some((512, 512)));
        check("768x768", Some((768, 768)));
        check("1024X768", Some((1024, 768)));
        check("16x2048", Some((16, 2048)));
        check("15x512", None);
        check("4096x4096", None);
        check("512", None);
        check("axb", None);
        check("-1x5", None);
    }

    #[test]
    fn bytes_round_as_a_saturating_cast_would() {
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, -0.5, -0.51, 254.5, 255.0, 255.49, 255.5, 256.0, 1e9, -1e9];
        let sweep = (-4_000..=264_000).map(|i| i as f32 / 1000.0);
        for value in specials.into_iter().chain(sweep) {
            assert_eq!(to_byte(value), (value + 0.5) as u8, "{value}");
        }
    }

    #[test]
    fn seeds_separate_their_fields() {
        assert_ne!(seed_of(&[b"ab", b"c"]), seed_of(&[b"a", b"bc"]));
        assert_eq!(seed_of(&[b"x"]), seed_of(&[b"x"]));
    }

    #[test]
    fn renders_are_deterministic_valid_pngs_of_the_asked_size() {
        let seed = seed_of(&[b"one"]);
        let png = render_png(&seed, 64, 48).expect("renders");
        assert_eq!(png, render_png(&seed, 64, 48).expect("renders"), "same seed, same bytes");
        assert_ne!(png, render_png(&seed_of(&[b"two"]), 64, 48).expect("renders"), "another seed, another image");
        let decoded = image::load_from_memory_with_format(&png, image::ImageFormat::Png).expect("valid PNG");
        assert_eq!((decoded.width(), decoded.height()), (64, 48));
        assert_eq!(render_png(&seed, 8, 8), Err(RenderError::Size));
        // A height that is not a whole number of background bands: the last, shorter
        // band is painted too (nothing the renderer paints is black).
        let odd = image::load_from_memory_with_format(&render_png(&seed, 37, 53).expect("renders"), image::ImageFormat::Png).expect("valid PNG");
        assert_eq!((odd.width(), odd.height()), (37, 53));
        // Painted into a buffer of zeros, and into one that held another, larger image
        // (the reused buffer's case): every byte is the image's own either way.
        let mut pixels = Vec::new();
        render_rgb(&seed, 37, 53, &mut pixels);
        let mut reused = Vec::new();
        render_rgb(&seed_of(&[b"two"]), 64, 64, &mut reused);
        render_rgb(&seed, 37, 53, &mut reused);
        assert_eq!(pixels, reused, "a reused buffer gives the same image");
        for (index, pixel) in pixels.chunks_exact(3).enumerate() {
            assert_ne!(pixel, [0, 0, 0], "pixel ({}, {}) left unpainted", index % 37, index / 37);
        }
    }
}
