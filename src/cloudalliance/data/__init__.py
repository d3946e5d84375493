"""Stage 1, the data (notebook 01): the Intel photos in Kaggle's layout, looked at before any training.

Read in this order:
1. ``layout`` — any folder of photos laid out once as Kaggle's, with a held-out test split (``prepare_dataset``);
2. ``explore`` — every image opened and checked, counts per class, the problems found (``validate_dataset``);
3. ``folders`` — reading the class folders of a split (``load_image_folder``), and a stratified split;
4. ``training_set`` — the training set decoded in one call, as the training script takes it (``prepare_training_data``);
5. ``synthetic`` — the drawn scenes the course runs on when the real photos are not there.
"""
