//! Trial curves as PNG images, drawn with `plotters` without system
//! libraries (as troupe-rl): the bitmap backend and `ab_glyph` with DejaVu
//! Sans compiled in (the `dejavu` crate), instead of plotters' default
//! `ttf` feature, which looks fonts up through fontconfig.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::TuneError;

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        // DejaVu Sans is a valid TrueType font; if ab_glyph ever refused
        // it, text would be missing, which the drawing reports.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// One curve: a trial's id and its (iteration, value) points.
pub(crate) type Series = (usize, Vec<(f64, f64)>);

/// Draws `metric` against the iteration, one line per trial, into a PNG.
pub(crate) fn plot_curves(
    path: &Path,
    title: &str,
    metric: &str,
    series: &[Series],
) -> Result<(), TuneError> {
    draw(path, title, metric, series).map_err(|reason| TuneError::Plot {
        path: path.to_owned(),
        reason,
    })
}

fn draw(path: &Path, title: &str, metric: &str, series: &[Series]) -> Result<(), String> {
    register_font();
    let points = series
        .iter()
        .flat_map(|(_, p)| p.iter())
        .filter(|p| p.1.is_finite());
    let (mut max_x, mut lo, mut hi) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in points {
        max_x = max_x.max(*x);
        lo = lo.min(*y);
        hi = hi.max(*y);
    }
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..max_x, (lo - pad)..(hi + pad))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("iteration")
        .y_desc(metric)
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (trial, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let finite: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.1.is_finite()).collect();
        let drawn = chart
            .draw_series(LineSeries::new(finite, color.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        if series.len() <= 12 {
            drawn
                .label(format!("trial {trial}"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
    }
    if series.len() <= 12 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_are_a_png_with_ink_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        let series: Vec<Series> = (0..3)
            .map(|t| {
                (
                    t,
                    (1..=20).map(|i| (i as f64, (i * (t + 1)) as f64)).collect(),
                )
            })
            .collect();
        plot_curves(&path, "test", "loss", &series).unwrap();
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
        let err = plot_curves(Path::new("/nonexistent-dir/x/c.png"), "t", "m", &[]).unwrap_err();
        assert!(matches!(err, TuneError::Plot { .. }), "{err}");
    }
}
