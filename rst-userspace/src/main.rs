use aya::programs::{TestRun, TestRunOptions};
fn main() -> anyhow::Result<()> {
    let mut ebpf = rstwatch::loader::load(1024)?;
    let mut f = vec![0u8; 54];
    f[12] = 0x08; f[14] = 0x45; f[14+9] = 6; f[26..30].copy_from_slice(&[10,0,0,1]); f[30..34].copy_from_slice(&[10,0,0,2]);
    f[34..36].copy_from_slice(&443u16.to_be_bytes()); f[36..38].copy_from_slice(&5555u16.to_be_bytes()); f[46] = 0x50; f[47] = 0x14;
    let p = rstwatch::loader::xdp_program(&mut ebpf)?;
    for _ in 0..3 { let r = p.test_run(TestRunOptions { data_in: Some(&f), repeat: 1000, ..TestRunOptions::new() })?; println!("ret {} {:?}", r.return_value, r.duration); }
    let mut c = rstwatch::collector::Collector::new(&mut ebpf)?;
    let s = c.collect()?;
    println!("{:?}", s);
    let s = c.collect()?;
    println!("{:?}", s);
    Ok(())
}
