"""Person re-identification heads: CORE-ReID (unsupervised domain adaptation) on any zoo backbone."""
