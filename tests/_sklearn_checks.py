"""The one table of scikit-learn checks that sksim's estimators are expected to fail."""

EXPECTED_FAILED_CHECKS = {
    "check_estimators_overwrite_params": (
        "joblib.hash of a deep-copied torch.nn.Module usually differs from the "
        "original's even when nothing changed, so the net parameter looks mutated "
        "(the check then fails, and now and then it passes); "
        "test_fit_does_not_mutate_the_net checks the module's state_dict and "
        "training flags instead."
    ),
}

# GradientDensityEstimator's log-densities near 0 (counts near N), in the check
# that sets n_components=1, to 1e-9.
SKETCH_ROUNDING_CHECKS = {
    "check_methods_sample_order_invariance": (
        "it sets n_components=1 and asks for log-densities equal to 1e-9: float32 "
        "sketches' products round differently (1e-7) as the rows' order changes "
        "BLAS's blocking; test_density_does_not_depend_on_the_rows_order checks "
        "the invariance to float32 rounding"
    ),
}

# DiffeoTransform draws one random field per sample, in order.
ORDER_DEPENDENT_CHECKS = {
    "check_methods_sample_order_invariance": (
        "the i-th sample gets the i-th random field, so permuting the samples "
        "deforms them differently"
    ),
    "check_methods_subset_invariance": (
        "the i-th sample gets the i-th random field, so a subset is deformed "
        "differently"
    ),
}

# SimilarityRegularizedNet is a skorch net and inherits what skorch does not check.
_SKORCH = "inherited from skorch's nets, which do not follow this convention: "
SKORCH_INHERITED_CHECKS = {
    "check_no_attributes_set_in_init": _SKORCH + "history_ and initialized_ in init",
    "check_n_features_in_after_fitting": _SKORCH + "no n_features_in_",
    "check_n_features_in": _SKORCH + "no n_features_in_",
    "check_complex_data": _SKORCH + "complex data reach torch",
    "check_dtype_object": _SKORCH + "object arrays reach torch's collate",
    "check_estimators_empty_data_messages": _SKORCH + "no check for empty data",
    "check_estimators_nan_inf": _SKORCH + "no check for NaN and inf",
    "check_estimator_sparse_tag": _SKORCH + "sparse data reach torch",
    "check_estimator_sparse_array": _SKORCH + "sparse data reach torch",
    "check_estimator_sparse_matrix": _SKORCH + "sparse data reach torch",
    "check_classifier_data_not_an_array": _SKORCH + "array-likes are not converted",
    "check_regressor_data_not_an_array": _SKORCH + "array-likes are not converted",
    "check_classifiers_one_label": _SKORCH + "one class cannot be trained",
    "check_classifiers_classes": _SKORCH + "labels must be encoded as 0..C-1",
    "check_classifiers_train": _SKORCH + "array-likes are not converted",
    "check_classifiers_regression_target": _SKORCH + "no check of the target type",
    "check_regressors_train": _SKORCH + "list targets are not converted",
    "check_regressors_int": _SKORCH + "random initialisation, no random_state",
    "check_regressors_no_decision_function": _SKORCH + "random initialisation",
    "check_estimators_partial_fit_n_features": _SKORCH + "no feature-count check",
    "check_supervised_y_no_nan": _SKORCH + "no check for NaN targets",
    "check_supervised_y_2d": _SKORCH + "2-d targets are not converted",
    "check_set_params": _SKORCH + "set_params validates parameter types",
    "check_fit_idempotent": _SKORCH + "random initialisation, no random_state",
    "check_fit1d": _SKORCH + "1-d X reaches the module",
    "check_fit2d_predict1d": _SKORCH + "1-d X reaches the module",
    "check_requires_y_none": _SKORCH + "its own message for y=None",
}
