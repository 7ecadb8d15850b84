//! Learning curves as PNG images, drawn with `plotters`.
//!
//! Built without system libraries: the bitmap backend and `ab_glyph` with
//! DejaVu Sans compiled in (the `dejavu` crate), instead of plotters'
//! default `ttf` feature, which looks fonts up through fontconfig.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::RlError;
use crate::report::IterationMetrics;

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        // DejaVu Sans is a valid TrueType font; if ab_glyph ever refused it,
        // text would be missing from the image, which the drawing reports.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// Draws the mean return (last 100 episodes) against environment steps,
/// with `target` as a horizontal line, into a PNG at `path`.
///
/// ```no_run
/// # fn f(history: &[troupe_rl::IterationMetrics]) -> Result<(), troupe_rl::RlError> {
/// troupe_rl::plot_learning_curve("curve.png", "PPO on CartPole-v1", history, Some(475.0))?;
/// # Ok(()) }
/// ```
pub fn plot_learning_curve(
    path: impl AsRef<Path>,
    title: &str,
    history: &[IterationMetrics],
    target: Option<f64>,
) -> Result<(), RlError> {
    let path = path.as_ref();
    draw(path, title, history, target).map_err(|reason| RlError::Plot {
        path: path.to_owned(),
        reason,
    })
}

fn draw(
    path: &Path,
    title: &str,
    history: &[IterationMetrics],
    target: Option<f64>,
) -> Result<(), String> {
    register_font();
    let points: Vec<(f64, f64)> = history
        .iter()
        .filter(|m| m.episode_return_mean.is_finite())
        .map(|m| (m.env_steps as f64, m.episode_return_mean))
        .collect();
    let max_x = history.last().map_or(1.0, |m| m.env_steps as f64).max(1.0);
    let values = points.iter().map(|p| p.1).chain(target);
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.05).max(1.0);

    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..max_x, (lo - pad)..(hi + pad))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("environment steps")
        .y_desc("mean return, last 100 episodes")
        .label_style(("sans-serif", 16))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    if let Some(target) = target {
        chart
            .draw_series(LineSeries::new(
                [(0.0, target), (max_x, target)],
                RED.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?
            .label(format!("target {target}"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    }
    chart
        .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label("mean return")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_curve_is_a_png_with_ink_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curve.png");
        let history: Vec<IterationMetrics> = (1..=50)
            .map(|i| IterationMetrics {
                iteration: i,
                env_steps: i * 256,
                episode_return_mean: if i < 3 { f64::NAN } else { (i * 10) as f64 },
                ..IterationMetrics::default()
            })
            .collect();
        plot_learning_curve(&path, "test", &history, Some(475.0)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(
            bytes.len() > 5_000,
            "an almost empty image: {} bytes",
            bytes.len()
        );
    }

    #[test]
    fn an_unwritable_path_is_an_error() {
        let err = plot_learning_curve("/nonexistent-dir/x/curve.png", "t", &[], None).unwrap_err();
        assert!(err.to_string().contains("curve.png"), "{err}");
    }
}
