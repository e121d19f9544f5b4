"""MAE pretraining of ViT encoders (scripts/pretrain.py)."""
