"""Stage 1, the data (notebooks 01 and 02): the Intel photos in Kaggle's layout, looked at before any training.

Read in this order:
1. ``layout`` — any folder of photos laid out once as Kaggle's, with a held-out test split (``prepare_dataset``);
2. ``explore`` — every image opened and checked, counts per class, the problems found (``validate_dataset``);
3. ``folders`` — reading the class folders, and the training set decoded in one call (``prepare_training_data``);
4. ``synthetic`` — the drawn scenes the course runs on when the real photos are not there.
"""
