//! With the scalar set chosen (its own process: the set is chosen once per process), the
//! `vecmath` functions run the scalar table: the set in use replaces no f32 entry.

use tomoe_quant::dispatch::{kernels, scalar_set, select_kernels};
use tomoe_quant::vecmath;

#[test]
fn the_chosen_scalar_set_routes_vecmath() {
    let set = select_kernels("scalar").expect("the scalar set is always available");
    assert_eq!(tomoe_quant::kernel_name(), "scalar");
    assert!(std::ptr::eq(set, kernels()));
    assert!(kernels().f32.overrides(&scalar_set().f32).is_empty());
    let a: Vec<f32> = (0..77).map(|i| (i as f32 * 0.37).sin()).collect();
    let b: Vec<f32> = (0..77).map(|i| (i as f32 * 0.11).cos()).collect();
    assert_eq!(vecmath::dot(&a, &b).to_bits(), vecmath::dot_scalar(&a, &b).to_bits());
    let (mut x, mut y) = (a.clone(), a.clone());
    vecmath::swiglu(&mut x, &b);
    vecmath::swiglu_scalar(&mut y, &b);
    assert_eq!(x, y);
}
