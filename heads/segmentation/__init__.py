"""Semantic and medical segmentation heads: ParaTransCNN, UPerNet and Semantic FPN fed by any zoo backbone."""
