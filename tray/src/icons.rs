//! The tray icons, drawn in code as RGBA pixels at whatever size is asked for.
//!
//! Each state has its own colour *and* its own shape, so it reads at a glance
//! and for people who do not tell the colours apart: a handset on blue (idle),
//! a handset with sound waves on a bright orange square (ringing), a handset on
//! green (in a call), a crossed-out handset on red (muted), two pause bars on
//! amber (on hold), and a hollow grey ring with a cross (daemon down). Every
//! shape sits on a dark outline with a light glyph, so it stays readable on
//! light and dark panels alike. Drawing from signed distances with 4×4
//! supersampling keeps edges smooth at 16 to 32 px.

use crate::view::IconKind;

/// Straight (not premultiplied) RGBA.
type Rgba = [f32; 4];

const OUTLINE: Rgba = [0.10, 0.10, 0.12, 1.0];
const GLYPH: Rgba = [1.0, 1.0, 1.0, 1.0];

/// Signed distance to a circle (negative inside).
fn circle(x: f32, y: f32, cx: f32, cy: f32, r: f32) -> f32 {
    ((x - cx).powi(2) + (y - cy).powi(2)).sqrt() - r
}

/// Signed distance to a rounded square centred at the origin, half-size `h`.
fn rounded_square(x: f32, y: f32, h: f32, radius: f32) -> f32 {
    let (qx, qy) = (x.abs() - h + radius, y.abs() - h + radius);
    (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt() + qx.max(qy).min(0.0) - radius
}

/// Signed distance to a segment of thickness `2 * r`.
fn capsule(x: f32, y: f32, (ax, ay): (f32, f32), (bx, by): (f32, f32), r: f32) -> f32 {
    let (px, py, dx, dy) = (x - ax, y - ay, bx - ax, by - ay);
    let t = ((px * dx + py * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0);
    ((px - dx * t).powi(2) + (py - dy * t).powi(2)).sqrt() - r
}

/// Distance to an arc of a circle (centre, radius) between two angles (radians,
/// y pointing down), as a stroke of half-width `w`.
fn arc(x: f32, y: f32, (cx, cy): (f32, f32), radius: f32, (from, to): (f32, f32), w: f32) -> f32 {
    let angle = (y - cy).atan2(x - cx);
    if angle >= from && angle <= to {
        (circle(x, y, cx, cy, radius)).abs() - w
    } else {
        let end = |a: f32| circle(x, y, cx + radius * a.cos(), cy + radius * a.sin(), w);
        end(from).min(end(to))
    }
}

/// A telephone handset, earpiece top left and mouthpiece bottom right, in a
/// box of [-1, 1]² scaled by `s`.
fn handset(x: f32, y: f32, s: f32) -> f32 {
    let (x, y) = (x / s, y / s);
    // The handle: a stroke along a quarter circle bulging to the bottom left.
    let handle =
        arc(x, y, (0.55, -0.55), 0.95, (std::f32::consts::FRAC_PI_2 + 0.15, std::f32::consts::PI - 0.15), 0.17);
    // The ear and mouth pieces: short fat strokes across the ends of the handle.
    let ear = capsule(x, y, (-0.62, -0.62), (-0.28, -0.78), 0.2);
    let mouth = capsule(x, y, (0.62, 0.62), (0.78, 0.28), 0.2);
    handle.min(ear).min(mouth) * s
}

/// The handset turned by `angle` radians (clockwise on screen).
fn handset_turned(x: f32, y: f32, s: f32, angle: f32) -> f32 {
    // Turning the picture one way is sampling it turned the other way.
    let (sin, cos) = (-angle).sin_cos();
    handset(x * cos - y * sin, x * sin + y * cos, s)
}

/// The shape of each state: (background distance, glyph distance, background colour).
fn shape(kind: IconKind, x: f32, y: f32) -> (f32, f32, Rgba) {
    match kind {
        // On the hook: the handset lies flat, handle up.
        IconKind::Idle => (
            circle(x, y, 0.0, 0.0, 0.92),
            handset_turned(x, y + 0.08, 0.6, 3.0 * std::f32::consts::FRAC_PI_4),
            [0.16, 0.42, 0.85, 1.0],
        ),
        // Off the hook: the handset tilted, as held to the ear.
        IconKind::InCall => (circle(x, y, 0.0, 0.0, 0.92), handset(x, y, 0.6), [0.10, 0.62, 0.24, 1.0]),
        IconKind::Ringing => {
            // Sound waves to the top right of a smaller handset.
            let waves = arc(x, y, (-0.32, 0.32), 0.6, (-1.45, -0.12), 0.1).min(arc(
                x,
                y,
                (-0.32, 0.32),
                0.95,
                (-1.45, -0.12),
                0.1,
            ));
            let glyph = handset(x + 0.3, y - 0.3, 0.42).min(waves);
            (rounded_square(x, y, 0.94, 0.3), glyph, [0.98, 0.45, 0.02, 1.0])
        }
        IconKind::Muted => {
            let slash = capsule(x, y, (-0.62, 0.62), (0.62, -0.62), 0.11);
            (circle(x, y, 0.0, 0.0, 0.92), handset(x, y, 0.6).min(slash), [0.82, 0.12, 0.12, 1.0])
        }
        IconKind::OnHold => {
            let bars = capsule(x, y, (-0.25, -0.42), (-0.25, 0.42), 0.14).min(capsule(
                x,
                y,
                (0.25, -0.42),
                (0.25, 0.42),
                0.14,
            ));
            (circle(x, y, 0.0, 0.0, 0.92), bars, [0.85, 0.62, 0.0, 1.0])
        }
        IconKind::DaemonDown => {
            // A ring, not a disc: nothing is there.
            let ring = circle(x, y, 0.0, 0.0, 0.72).abs() - 0.2;
            let cross = capsule(x, y, (-0.3, -0.3), (0.3, 0.3), 0.1).min(capsule(x, y, (-0.3, 0.3), (0.3, -0.3), 0.1));
            (ring.min(cross), f32::INFINITY, [0.55, 0.55, 0.58, 1.0])
        }
    }
}

/// Porter-Duff "over" on straight alpha.
fn over(top: Rgba, bottom: Rgba) -> Rgba {
    let a = top[3] + bottom[3] * (1.0 - top[3]);
    if a <= 0.0 {
        return [0.0; 4];
    }
    let mix = |i: usize| (top[i] * top[3] + bottom[i] * bottom[3] * (1.0 - top[3])) / a;
    [mix(0), mix(1), mix(2), a]
}

fn with_alpha(mut colour: Rgba, coverage: f32) -> Rgba {
    colour[3] *= coverage;
    colour
}

/// Colour of one sample point in [-1, 1]².
fn sample(kind: IconKind, x: f32, y: f32, pixel: f32) -> Rgba {
    // The outline is the background grown by about a pixel and a half; the
    // shapes shrink to leave room for it (and half a pixel of margin).
    let outline_width = (1.5 * pixel).max(0.06);
    let scale = 1.0 - outline_width - 0.5 * pixel;
    let (background, glyph, fill) = shape(kind, x / scale, y / scale);
    let (background, glyph) = (background * scale, glyph * scale);
    let inside = |d: f32| if d <= 0.0 { 1.0 } else { 0.0 };
    let mut colour = with_alpha(OUTLINE, inside(background - outline_width));
    colour = over(with_alpha(fill, inside(background)), colour);
    over(with_alpha(GLYPH, inside(glyph)), colour)
}

/// The icon for `kind` as a PNG file of `size`×`size` pixels.
pub fn png(kind: IconKind, size: u32) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, size, size);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(&rgba(kind, size))?;
    Ok(out)
}

/// The icon for `kind` as `size`×`size` straight RGBA bytes, row by row.
pub fn rgba(kind: IconKind, size: u32) -> Vec<u8> {
    const SS: u32 = 4;
    let pixel = 2.0 / size as f32;
    let mut out = Vec::with_capacity((size * size * 4) as usize);
    for py in 0..size {
        for px in 0..size {
            let mut acc = [0.0f32; 4];
            for sy in 0..SS {
                for sx in 0..SS {
                    let x = -1.0 + (px as f32 + (sx as f32 + 0.5) / SS as f32) * pixel;
                    let y = -1.0 + (py as f32 + (sy as f32 + 0.5) / SS as f32) * pixel;
                    let c = sample(kind, x, y, pixel);
                    // Average premultiplied, so transparent samples add no colour.
                    for i in 0..3 {
                        acc[i] += c[i] * c[3];
                    }
                    acc[3] += c[3];
                }
            }
            let n = (SS * SS) as f32;
            let alpha = acc[3] / n;
            let channel = |v: f32| (v * 255.0).round().clamp(0.0, 255.0) as u8;
            if alpha > 0.0 {
                out.extend([
                    channel(acc[0] / acc[3]),
                    channel(acc[1] / acc[3]),
                    channel(acc[2] / acc[3]),
                    channel(alpha),
                ]);
            } else {
                out.extend([0, 0, 0, 0]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixel(image: &[u8], size: u32, x: u32, y: u32) -> [u8; 4] {
        let i = ((y * size + x) * 4) as usize;
        [image[i], image[i + 1], image[i + 2], image[i + 3]]
    }

    /// Writes every icon as a PNG to $VOICELINK_ICON_DIR, to look at them.
    #[test]
    fn icons_can_be_written_as_png() {
        for kind in IconKind::ALL {
            let png = png(kind, 32).unwrap();
            assert_eq!(&png[1..4], b"PNG");
            if let Some(dir) = std::env::var_os("VOICELINK_ICON_DIR") {
                for size in [16, 22, 32, 64] {
                    std::fs::write(
                        std::path::Path::new(&dir).join(format!("{kind:?}-{size}.png")),
                        self::png(kind, size).unwrap(),
                    )
                    .unwrap();
                }
            }
        }
    }

    #[test]
    fn every_icon_is_drawn_at_every_size() {
        for size in [16, 22, 24, 32, 64] {
            for kind in IconKind::ALL {
                let image = rgba(kind, size);
                assert_eq!(image.len(), (size * size * 4) as usize);
                assert_eq!(pixel(&image, size, 0, 0)[3], 0, "{kind:?}@{size}: the corner is transparent");
                let opaque = image.chunks(4).filter(|p| p[3] == 255).count();
                assert!(opaque > (size * size / 8) as usize, "{kind:?}@{size}: only {opaque} opaque pixels");
            }
        }
    }

    #[test]
    fn every_icon_has_a_dark_edge_and_a_light_glyph_or_fill() {
        // Readable on light panels (dark pixels) and dark panels (light pixels).
        for kind in IconKind::ALL {
            let image = rgba(kind, 32);
            let luma = |p: &[u8]| 0.3 * f32::from(p[0]) + 0.59 * f32::from(p[1]) + 0.11 * f32::from(p[2]);
            let opaque: Vec<&[u8]> = image.chunks(4).filter(|p| p[3] == 255).collect();
            assert!(opaque.iter().any(|p| luma(p) < 60.0), "{kind:?} has no dark pixels");
            assert!(opaque.iter().any(|p| luma(p) > 140.0), "{kind:?} has no light pixels");
        }
    }

    #[test]
    fn the_icons_differ_from_each_other_in_shape_as_well_as_colour() {
        let masks: Vec<(IconKind, Vec<bool>)> = IconKind::ALL
            .iter()
            .map(|&k| {
                (k, rgba(k, 32).chunks(4).map(|p| p[3] > 127 && p[0] > 200 && p[1] > 200 && p[2] > 200).collect())
            })
            .collect();
        for (i, (a, mask_a)) in masks.iter().enumerate() {
            for (b, mask_b) in &masks[i + 1..] {
                // Muted and idle share the handset; the slash must still change
                // a visible number of pixels.
                let differing = mask_a.iter().zip(mask_b).filter(|(x, y)| x != y).count();
                assert!(differing >= 20, "{a:?} and {b:?} differ in only {differing} white pixels");
            }
        }
        let centre_colour = |k| pixel(&rgba(k, 32), 32, 4, 16);
        let mut colours: Vec<[u8; 4]> = IconKind::ALL.iter().map(|&k| centre_colour(k)).collect();
        colours.sort();
        colours.dedup();
        assert_eq!(colours.len(), IconKind::ALL.len(), "each state has its own colour near the left edge");
    }
}
