"""The planned techniques: module-wise training (`modules`), layer-parallel training by MGRIT
(`mgrit`) and hyper-parameter sweeps (`sweep`). Their statements are part of the language and
checked for their place today; each reports "not supported yet" until its technique arrives."""
