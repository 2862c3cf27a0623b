"""The one table of scikit-learn checks that sksim's estimators are expected to fail."""

EXPECTED_FAILED_CHECKS = {
    "check_estimators_overwrite_params": (
        "joblib.hash of a deep-copied torch.nn.Module differs from the original's "
        "even when nothing changed, so the net parameter always looks mutated; "
        "test_fit_does_not_mutate_the_net checks the module's state_dict and "
        "training flags instead."
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
