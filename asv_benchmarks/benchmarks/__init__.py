"""asv benchmarks for circfft (see ../asv.conf.json)."""
