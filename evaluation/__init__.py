"""LaMP evaluation: data format, official metrics, methods run over HTTP, reports."""
