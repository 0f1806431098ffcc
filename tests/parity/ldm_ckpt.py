def write_and_verify(pipe, model_dir, models_dir, fixtures):
    return None
