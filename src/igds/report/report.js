(function(){
  function key(td){
    var v=td.getAttribute('data-v'); if(v===null) v=td.textContent.trim();
    if(v===''||v==='—') return {m:true};
    var x=Number(v); return isNaN(x)?{s:v.toLowerCase()}:{x:x};
  }
  function cmp(a,b){
    if(a.x!==undefined&&b.x!==undefined) return a.x-b.x;
    if(a.x!==undefined) return -1; if(b.x!==undefined) return 1;
    return a.s<b.s?-1:a.s>b.s?1:0;
  }
  function sortTable(table,col,dir){
    var tb=table.tBodies[0], rows=Array.prototype.slice.call(tb.rows);
    rows.sort(function(r1,r2){
      var a=key(r1.cells[col]), b=key(r2.cells[col]);
      if(a.m||b.m) return (a.m?1:0)-(b.m?1:0) || r1._i-r2._i;  // missing values always last
      return dir*cmp(a,b) || r1._i-r2._i;
    });
    rows.forEach(function(r){tb.appendChild(r);});
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,j){
      if(j===col) th.setAttribute('aria-sort',dir>0?'ascending':'descending'); else th.removeAttribute('aria-sort');
    });
  }
  var tables=document.querySelectorAll('table.sortable');
  Array.prototype.forEach.call(tables,function(table){
    if(!table.tHead||!table.tBodies.length) return;
    Array.prototype.forEach.call(table.tBodies[0].rows,function(r,i){r._i=i;});
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,j){
      th.tabIndex=0; th.title=th.title||'click to sort';
      function go(){ sortTable(table,j,th.getAttribute('aria-sort')==='descending'?1:-1); }
      th.addEventListener('click',go);
      th.addEventListener('keydown',function(e){ if(e.key==='Enter') go(); });
    });
  });
  // #selftest: sort every numeric column both ways, check the order, restore (used by the test suite).
  if(location.hash==='#selftest'){
    var bad=[];
    Array.prototype.forEach.call(tables,function(table,t){
      var ncol=table.tHead.rows[0].cells.length;
      for(var c=0;c<ncol;c++){
        [1,-1].forEach(function(dir){
          sortTable(table,c,dir);
          var ks=Array.prototype.map.call(table.tBodies[0].rows,function(r){return key(r.cells[c]);});
          for(var i=1;i<ks.length;i++){
            if(ks[i-1].m&&!ks[i].m) bad.push((table.id||t)+':'+c+' missing-before-value');
            else if(!ks[i-1].m&&!ks[i].m&&dir*cmp(ks[i-1],ks[i])>0) bad.push((table.id||t)+':'+c+':'+dir);
          }
        });
      }
      var tb=table.tBodies[0], rows=Array.prototype.slice.call(tb.rows);
      rows.sort(function(a,b){return a._i-b._i;}).forEach(function(r){tb.appendChild(r);});
      Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th){th.removeAttribute('aria-sort');});
    });
    document.body.setAttribute('data-selftest',bad.length?'fail '+bad.slice(0,5).join(' '):'pass');
  }
  document.body.setAttribute('data-report-ready','ok');
  document.body.setAttribute('data-sortable-tables',String(tables.length));
})();
