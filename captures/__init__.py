"""The loadtape capture format: schema, journal, Parquet writer and reader, importers."""
